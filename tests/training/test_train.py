"""Tests for the training loop: each model kind learns, resume is bit-exact, a NaN loss stops cleanly."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from sacseg.checkpoint import load_checkpoint
from sacseg.config import TrainConfig, load_config
from sacseg.factory import build_datasets, build_model_from_config, load_trained_model
from sacseg.training import loop
from sacseg.training.data import make_train_loader
from sacseg.training.distributed import init_distributed
from sacseg.training.optim import build_optimizer, build_scheduler
from sacseg.training.train import NonFiniteLossError, TrainResult, train

# Module scope, so it is in force before the module-scoped baseline run too.


@pytest.fixture(scope="module")
def baseline_run(tiny_config: Callable[..., TrainConfig], tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, TrainResult]:
    out = tmp_path_factory.mktemp("baseline")
    deterministic = torch.are_deterministic_algorithms_enabled()
    summary = train(tiny_config(out, deterministic=not deterministic))
    assert torch.are_deterministic_algorithms_enabled() == deterministic  # process settings put back
    return out, summary


def test_baseline_learns_and_writes_its_outputs(baseline_run: tuple[Path, TrainResult]) -> None:
    out, summary = baseline_run
    assert summary.iteration == 4 and summary.losses[-1] < summary.losses[0]
    assert 0.0 <= summary.best_miou <= 1.0
    for name in ("config.yaml", "git_revision.txt", "train.log", "last.pt", "best.pt"):
        assert (out / name).is_file(), name
    assert list((out / "tb").glob("events.out.tfevents.*"))
    log = (out / "train.log").read_text()
    assert "iteration 4/4 loss" in log and "validation mIoU" in log
    state = load_checkpoint(out / "last.pt")
    assert state["iteration"] == 4 and state["config"]["model"] == "fcn_resnet18"
    assert state["best_metric"] == pytest.approx(summary.best_miou)


@pytest.mark.parametrize("model", ["sac_single_resnet18", "sac_multiple_resnet18"])
def test_sac_models_learn(tiny_config: Callable[..., TrainConfig], tmp_path: Path, model: str) -> None:
    summary = train(tiny_config(tmp_path, model=model, iterations=3, val_every=3))
    assert summary.losses[-1] < summary.losses[0]


def test_only_variant_trains_just_the_scale_regressor(
    tiny_config: Callable[..., TrainConfig], tmp_path: Path, baseline_run: tuple[Path, TrainResult]
) -> None:
    baseline = load_checkpoint(baseline_run[0] / "last.pt")["model"]
    # Six steps: the regressors start at exactly scale 1, where every tap sits on an integer position
    # and the sampler's gradient is its one-sided (right-hand) derivative there, so the first step
    # need not lower the loss (here it raises it by 7e-4); the steps after it do.
    cfg = tiny_config(
        tmp_path, model="sac_single_resnet18", baseline_checkpoint=str(baseline_run[0] / "last.pt"), lr=5e-4,
        iterations=6, val_every=6,
    )  # fmt: skip
    summary = train(cfg)
    assert summary.losses[-1] < summary.losses[0]
    trained = load_checkpoint(tmp_path / "last.pt")["model"]
    for key, value in baseline.items():
        assert torch.equal(trained[key], value), key  # the baseline stays frozen, batch norm included
    regressor = [k for k in trained if k.startswith("scale_regressors.")]
    initial = build_model_from_config(cfg).state_dict()
    assert regressor and any(not torch.equal(trained[k], initial[k]) for k in regressor)


def _interrupt_at(monkeypatch: pytest.MonkeyPatch, call: int) -> None:
    real_step = loop.train_step
    calls = {"n": 0}

    def step(*args: Any, **kwargs: Any) -> Any:
        calls["n"] += 1
        if calls["n"] == call:
            raise KeyboardInterrupt("simulated interruption")
        return real_step(*args, **kwargs)

    monkeypatch.setattr(loop, "train_step", step)


@pytest.mark.parametrize(
    "steps",
    [
        {},
        pytest.param({"precision": "bf16"}, marks=pytest.mark.slow),  # CPU bfloat16 autocast is slow too
        pytest.param({"precision": "fp16", "channels_last": True}, marks=pytest.mark.slow),  # CPU float16 is slow
        pytest.param({"compile": True}, marks=pytest.mark.slow),  # inductor compiles forward and backward
    ],
    ids=["fp32", "bf16", "fp16-channels_last", "compile"],
)
def test_interrupted_and_resumed_run_equals_uninterrupted_bit_for_bit(
    tiny_config: Callable[..., TrainConfig], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, steps: dict[str, Any]
) -> None:
    # 6 images, batch 2: 3 iterations per epoch; the run spans 2 epochs with flips and random
    # crops, and is cut during iteration 5, so it resumes mid-epoch from the iteration-4 checkpoint.
    # Each way of running the steps (precision, memory layout, compile) resumes exactly too.
    settings = {
        "scale_scenes_train_images": 6, "crop_size": 32, "scale_min": 0.8, "scale_max": 1.2, "flip": True,
        "model": "sac_single_resnet18", "iterations": 6, "checkpoint_every": 2, "val_every": 3, **steps,
    }  # fmt: skip
    reference = train(tiny_config(tmp_path / "straight", **settings))

    _interrupt_at(monkeypatch, call=5)
    with pytest.raises(KeyboardInterrupt):
        train(tiny_config(tmp_path / "cut", **settings))
    assert load_checkpoint(tmp_path / "cut" / "last.pt")["iteration"] == 4
    monkeypatch.undo()
    resumed = train(tiny_config(tmp_path / "cut", **settings), resume="auto")

    assert resumed.losses == reference.losses[4:]
    a, b = load_checkpoint(tmp_path / "straight" / "last.pt"), load_checkpoint(tmp_path / "cut" / "last.pt")
    for key, value in a["model"].items():
        assert torch.equal(value, b["model"][key]), key
    for key, value in a["optimizer"]["state"].items():
        assert torch.equal(value["momentum_buffer"], b["optimizer"]["state"][key]["momentum_buffer"])
    assert a["scheduler"] == b["scheduler"] and a["best_metric"] == b["best_metric"]
    # Recorded where a reader looks: the run's config and its log.
    recorded = load_config(tmp_path / "cut" / "config.yaml")
    assert all(getattr(recorded, key) == value for key, value in steps.items())
    log = (tmp_path / "cut" / "train.log").read_text()
    layout = "channels_last" if recorded.channels_last else "NCHW"
    assert f"steps: precision {recorded.precision}, {layout} memory layout, {'compiled' if recorded.compile else 'eager'}" in log
    load_trained_model(tmp_path / "cut" / "last.pt")  # plain parameter names: loads without compiling


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(
    tiny_config: Callable[..., TrainConfig], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_loss = loop.segmentation_loss
    calls = {"n": 0}

    def loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        calls["n"] += 1
        value = real_loss(logits, target)
        return value * float("nan") if calls["n"] == 3 else value

    monkeypatch.setattr(loop, "segmentation_loss", loss)
    with pytest.raises(NonFiniteLossError, match=r"iteration 3.*last good checkpoint is .*last.pt"):
        train(tiny_config(tmp_path))
    state = load_checkpoint(tmp_path / "last.pt")
    assert state["iteration"] == 2
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())
    assert "iteration 3" in (tmp_path / "train.log").read_text()


def test_resume_from_missing_checkpoint_names_it(tiny_config: Callable[..., TrainConfig], tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nothing.pt"):
        train(tiny_config(tmp_path), resume=str(tmp_path / "nothing.pt"))


def test_batches_do_not_depend_on_worker_count_or_skipping(tiny_config: Callable[..., TrainConfig], tmp_path: Path) -> None:
    # With random crops and flips: each sample's augmentation is fixed by (seed, epoch, index).
    cfg = tiny_config(tmp_path, scale_scenes_train_images=6, crop_size=32, scale_min=0.8, scale_max=1.2, flip=True)
    train_set, _ = build_datasets(cfg)
    ctx = init_distributed("cpu")

    def batches(workers: int, skip: int) -> list[torch.Tensor]:
        loader = make_train_loader(dataclasses.replace(cfg, workers=workers), train_set, ctx, 1, skip)
        return [images for images, _ in loader]

    plain = batches(0, 0)
    assert len(plain) == 3
    for got, expected in zip(batches(2, 1), plain[1:], strict=True):
        assert torch.equal(got, expected)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_cuda_mixed_precision_run(tiny_config: Callable[..., TrainConfig], tmp_path: Path, precision: str) -> None:
    summary = train(
        tiny_config(tmp_path, model="sac_single_resnet18", device="cuda", precision=precision, channels_last=True,
                    iterations=3, val_every=3)
    )  # fmt: skip
    assert summary.losses[-1] < summary.losses[0]
    scaler = load_checkpoint(tmp_path / "last.pt")["scaler"]
    assert scaler["scale"] > 0 if precision == "fp16" else scaler == {}  # bf16 needs no loss scaling


def test_scale_regressors_get_their_own_learning_rate(tiny_config: Callable[..., TrainConfig], tmp_path: Path) -> None:
    cfg = tiny_config(tmp_path, model="sac_multiple_resnet18", scale_lr_mult=0.1)
    model = build_model_from_config(cfg)
    optimizer = build_optimizer(cfg, model)
    main, scale = optimizer.param_groups
    assert main["lr"] == pytest.approx(0.01) and scale["lr"] == pytest.approx(0.001)
    regressor_params = {id(p) for p in model.scale_regressors.parameters()}
    assert {id(p) for p in scale["params"]} == regressor_params and len(regressor_params) == 4
    assert not regressor_params & {id(p) for p in main["params"]}
    assert len(main["params"]) + 4 == len(list(model.parameters()))
    # The poly schedule scales both groups alike.
    scheduler = build_scheduler(cfg, optimizer, 1, 4)
    optimizer.step()
    scheduler.step()
    assert scale["lr"] / main["lr"] == pytest.approx(0.1)
    # The baseline has no regressors: one group.
    assert len(build_optimizer(cfg, build_model_from_config(tiny_config(tmp_path))).param_groups) == 1


def test_a_scheduler_built_from_a_saved_state_continues_it_from_the_optimizers_base_rates(
    tiny_config: Callable[..., TrainConfig], tmp_path: Path
) -> None:
    cfg = tiny_config(tmp_path)  # poly over 4 iterations

    def sgd() -> torch.optim.SGD:
        return torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=cfg.lr)

    straight = sgd()
    scheduler = build_scheduler(cfg, straight, 1, 4)
    for _ in range(2):
        straight.step()
        scheduler.step()
    resumed = sgd()
    resumed.load_state_dict(straight.state_dict())
    continued = build_scheduler(cfg, resumed, 1, 4, scheduler.state_dict())
    assert continued.state_dict() == scheduler.state_dict() and resumed.param_groups[0]["lr"] == straight.param_groups[0]["lr"]
    for optimizer, schedule in ((straight, scheduler), (resumed, continued)):
        optimizer.step()
        schedule.step()
    assert continued.state_dict() == scheduler.state_dict() and resumed.param_groups[0]["lr"] == straight.param_groups[0]["lr"]
    # A base rate changed on resume (the config's lr) sets the rate from the saved iteration on.
    changed = sgd()
    changed.load_state_dict(straight.state_dict())
    changed.param_groups[0]["initial_lr"] = 0.5
    rebased = build_scheduler(cfg, changed, 1, 4, scheduler.state_dict())
    assert changed.param_groups[0]["lr"] == pytest.approx(0.5 * (1 - 3 / 4) ** 0.9)
    assert rebased.base_lrs == [0.5] and rebased.get_last_lr() == [changed.param_groups[0]["lr"]]
    assert rebased.last_epoch == scheduler.last_epoch == 3


def test_init_checkpoint_starts_every_model_from_its_weights_and_val_at_start_scores_them(
    tiny_config: Callable[..., TrainConfig], tmp_path: Path, baseline_run: tuple[Path, TrainResult]
) -> None:
    start = baseline_run[0] / "last.pt"
    baseline = load_checkpoint(start)["model"]
    for model, held in (("fcn_resnet18", {}), ("sac_multiple_resnet18", {"min_scale": 1.0, "max_scale": 1.0})):
        cfg = tiny_config(tmp_path / model, model=model, init_checkpoint=str(start), iterations=1, val_every=1,
                          val_at_start=True, **held)  # fmt: skip
        initial = build_model_from_config(cfg).state_dict()
        assert all(torch.equal(initial[k], v) for k, v in baseline.items())
        assert all(p.requires_grad for p in build_model_from_config(cfg).parameters())  # nothing frozen
        train(cfg)
        log = (tmp_path / model / "train.log").read_text()
        assert "iteration 0 validation mIoU" in log and "iteration 1 validation mIoU" in log
        assert load_checkpoint(tmp_path / model / "best.pt")["iteration"] in (0, 1)
    bad = tiny_config(tmp_path / "bad", model="fcn_resnet18", init_checkpoint=str(tmp_path / "missing.pt"))
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        train(bad)
