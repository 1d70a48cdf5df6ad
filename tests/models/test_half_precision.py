"""SAC models in bfloat16: the scale-adaptive layers keep float32 positions at realistic sizes."""

from __future__ import annotations

import torch

from sacseg.models import build_model


def test_bfloat16_sac_single_resnet18_follows_float32():
    # At 192x192 a bfloat16 position (exact integers only to 256) once indexed outside the input.
    torch.manual_seed(0)
    model = build_model("sac_single_resnet18", 5).eval()
    images = torch.randn(1, 3, 192, 192)
    with torch.no_grad():
        expected = model(images)["out"]
        got = model.to(torch.bfloat16)(images.bfloat16())["out"]
    assert got.dtype == torch.bfloat16 and got.shape == expected.shape
    error = (got.float() - expected).abs().max() / expected.abs().max()
    assert error <= 0.05, f"bfloat16 is {error:.3g} off float32 (relative to the largest logit)"
