"""predict(): whole vs sliding windows, flip and multi-scale fusion, scale maps for pictures."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn
from torch.nn import functional as F

from sacseg.models.inference import predict, predict_with_scales
from sacseg.options import InferenceOptions
from sacseg.utils.pair import pair

K = 5


class PixelwiseNet(nn.Module):
    """1x1 convolutions only: translation-equivariant, so windows cannot change the output."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.body = nn.Sequential(nn.Conv2d(3, 8, 1), nn.ReLU(), nn.Conv2d(8, K, 1))

    def forward(self, x: Tensor) -> dict:
        return {"out": self.body(x), "scales": {}}


class MirrorSymmetricNet(nn.Module):
    """1x1 convs, a 3x3 average pool and a global mean: f(flip(x)) == flip(f(x)), but not pixelwise."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(1)
        self.a = nn.Conv2d(3, 8, 1)
        self.b = nn.Conv2d(16, K, 1)

    def forward(self, x: Tensor) -> dict:
        y = F.relu(self.a(x))
        local = F.avg_pool2d(y, 3, stride=1, padding=1)
        glob = y.mean(dim=(2, 3), keepdim=True).expand_as(y)
        return {"out": self.b(torch.cat([local, glob], dim=1)), "scales": {}}


class WindowColumnNet(nn.Module):
    """Logit 0 is the column index inside the window, logit 1 is 0: exposes how windows are fused."""

    def forward(self, x: Tensor) -> dict:
        n, _, h, w = x.shape
        col = torch.arange(w, dtype=x.dtype).expand(n, 1, h, w)
        return {"out": torch.cat([col, torch.zeros_like(col)], dim=1), "scales": {}}


class WindowSizeNet(nn.Module):
    """Logits 0 and 1 are the height and width of the input: expose the size of every window run."""

    def forward(self, x: Tensor) -> dict:
        n, _, h, w = x.shape
        return {"out": torch.tensor([h, w], dtype=x.dtype).view(1, 2, 1, 1).expand(n, 2, h, w), "scales": {}}


class ScaleMapNet(PixelwiseNet):
    """Also returns a stride-4 scale map, as the SAC models do."""

    def forward(self, x: Tensor) -> dict:
        out = super().forward(x)
        s = x[:, :1, ::4, ::4].abs() + 1.0
        return {"out": out["out"], "scales": {"classifier": s}}


def _images(h: int = 37, w: int = 53, n: int = 2) -> Tensor:
    return torch.randn(n, 3, h, w, generator=torch.Generator().manual_seed(2))


def test_whole_is_softmax_of_logits() -> None:
    model, x = PixelwiseNet().eval(), _images()
    probs = predict(model, x)
    assert probs.shape == (2, K, 37, 53)
    torch.testing.assert_close(probs, model(x)["out"].softmax(1))


def test_one_window_covering_the_image_equals_whole() -> None:
    model, x = MirrorSymmetricNet().eval(), _images()
    torch.testing.assert_close(predict(model, x, InferenceOptions(mode="slide", crop_size=(37, 53))), predict(model, x))


@pytest.mark.parametrize(("crop", "stride"), [(16, 10), ((20, 17), (7, 11)), ((48, 24), 24), (64, None)])
def test_many_windows_on_pixelwise_model_equal_whole(crop, stride) -> None:
    # (48, 24) and 64 are taller than the image: clipped to its height
    model, x = PixelwiseNet().eval(), _images()
    torch.testing.assert_close(
        predict(model, x, InferenceOptions(mode="slide", crop_size=crop, stride=stride)), predict(model, x)
    )


@pytest.mark.parametrize(("crop", "stride"), [(64, None), ((64, 24), 12), ((20, 80), 10)])
def test_windows_larger_than_the_image_are_clipped_to_it(crop, stride) -> None:
    # As mmsegmentation: a window taller (wider) than the image runs at the image's height (width),
    # never on padding, so a model that is not pixelwise gives the whole-image result there.
    x = _images()
    window = (min(pair(crop, "crop")[0], 37), min(pair(crop, "crop")[1], 53))
    logits = predict(WindowSizeNet(), x, InferenceOptions(mode="slide", crop_size=crop, stride=stride)).log()
    torch.testing.assert_close(logits[:, 0] - logits[:, 1], torch.full((2, 37, 53), float(window[0] - window[1])))
    if crop == 64:
        model = MirrorSymmetricNet().eval()
        torch.testing.assert_close(predict(model, x, InferenceOptions(mode="slide", crop_size=crop)), predict(model, x))


def test_overlapping_logits_are_averaged_and_last_window_is_flush() -> None:
    # width 6, windows of 4 every 2 -> starts 0 and 2; logit 0 of pixel x averages (x - start)
    x = torch.zeros(1, 3, 2, 6)
    probs = predict(WindowColumnNet(), x, InferenceOptions(mode="slide", crop_size=(2, 4), stride=(2, 2)))
    fused = torch.tensor([0.0, 1.0, 1.0, 2.0, 2.0, 3.0])
    torch.testing.assert_close(probs[0, 0, 0], torch.sigmoid(fused))
    # width 7 with stride 2: starts 0, 2 and the flush 3
    probs = predict(WindowColumnNet(), torch.zeros(1, 3, 2, 7), InferenceOptions(mode="slide", crop_size=(2, 4), stride=2))
    fused = torch.tensor([0.0, 1.0, 1.0, 4 / 3, 3 / 2, 5 / 2, 3.0])
    torch.testing.assert_close(probs[0, 0, 0], torch.sigmoid(fused))


@pytest.mark.parametrize("mode", ["whole", "slide"])
def test_flip_fusion_of_symmetric_model_equals_plain(mode: str) -> None:
    model, x = MirrorSymmetricNet().eval(), _images()
    opts = {"crop_size": (37, 53)} if mode == "slide" else {}
    plain = predict(model, x, InferenceOptions(mode=mode, **opts))
    torch.testing.assert_close(predict(model, x, InferenceOptions(mode=mode, flip=True, **opts)), plain)
    # and flip fusion is not a no-op for a model that is not mirror-symmetric
    lopsided = WindowColumnNet()
    assert not torch.allclose(predict(lopsided, x, InferenceOptions(flip=True)), predict(lopsided, x))


def test_multi_scale_keeps_odd_input_size() -> None:
    model, x = MirrorSymmetricNet().eval(), _images(37, 53)
    for mode, opts in (("whole", {}), ("slide", {"crop_size": 24, "stride": 16})):
        probs = predict(model, x, InferenceOptions(mode=mode, scales=(0.5, 0.75, 1.25), flip=True, **opts))
        assert probs.shape == (2, K, 37, 53)
        torch.testing.assert_close(probs.sum(1), torch.ones(2, 37, 53))


def test_multi_scale_averages_per_scale_probabilities() -> None:
    model, x = MirrorSymmetricNet().eval(), _images(32, 48)
    fused = predict(model, x, InferenceOptions(scales=(0.5, 1.0)))
    half = model(F.interpolate(x, size=(16, 24), mode="bilinear", align_corners=False))["out"].softmax(1)
    half = F.interpolate(half, size=(32, 48), mode="bilinear", align_corners=False)
    torch.testing.assert_close(fused, (half + model(x)["out"].softmax(1)) / 2)


def test_runs_under_inference_mode() -> None:
    model, x = PixelwiseNet().eval(), _images()
    with torch.inference_mode():
        probs = predict(model, x, InferenceOptions(mode="slide", crop_size=16, stride=8, flip=True))
    assert not probs.requires_grad and probs.shape == (2, K, 37, 53)


def test_scale_maps_at_input_size() -> None:
    model, x = ScaleMapNet().eval(), _images()
    probs, maps = predict_with_scales(model, x)
    torch.testing.assert_close(probs, predict(model, x))
    assert set(maps) == {"classifier"} and maps["classifier"].shape == (2, 1, 37, 53)
    assert float(maps["classifier"].min()) >= 1.0
    assert predict_with_scales(PixelwiseNet(), x)[1] == {}


def test_bad_arguments_raise() -> None:
    model, x = PixelwiseNet(), _images()
    with pytest.raises(ValueError, match="whole, slide"):
        predict(model, x, InferenceOptions(mode="tiles"))
    with pytest.raises(ValueError, match="crop_size"):
        predict(model, x, InferenceOptions(mode="slide"))
    with pytest.raises(ValueError, match="stride"):
        predict(model, x, InferenceOptions(mode="slide", crop_size=8, stride=0))
    with pytest.raises(ValueError, match="gaps"):
        predict(model, x, InferenceOptions(mode="slide", crop_size=(8, 16), stride=(4, 17)))
    with pytest.raises(ValueError, match="scales"):
        predict(model, x, InferenceOptions(scales=(1.0, 0.0)))
    with pytest.raises(ValueError, match=r"\(3, 37, 53\)"):
        predict(model, x[0])
    with pytest.raises(TypeError, match="dict with an 'out'"):
        predict(lambda t: t, x)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="input size"):
        predict(lambda t: {"out": t[..., ::2, ::2]}, x)  # type: ignore[arg-type]


def test_with_a_real_sac_model() -> None:
    """The models' output dict plugs in: one window equals whole, scale maps come at input size."""
    from sacseg.models import build_model

    torch.manual_seed(0)
    model = build_model("sac_multiple_resnet18", num_classes=K).eval()
    x = _images(41, 67, n=1)
    whole = predict(model, x)
    torch.testing.assert_close(predict(model, x, InferenceOptions(mode="slide", crop_size=(41, 67))), whole)
    probs, maps = predict_with_scales(model, x)
    torch.testing.assert_close(probs, whole)
    assert set(maps) == {"classifier", "res5"}
    assert all(m.shape == (1, 1, 41, 67) for m in maps.values())
