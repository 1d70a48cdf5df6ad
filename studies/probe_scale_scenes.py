"""How hard is ScaleScenes? Time the generator and train a tiny fixed-receptive-field conv net on it (CPU)."""

from __future__ import annotations

import argparse
import time

import torch
from torch import nn

from sacseg.data import ScaleScenes


def tiny_baseline(num_classes: int, width: int = 32, dilations: tuple[int, ...] = (1, 2, 4, 8)) -> nn.Sequential:
    """Four 3x3 conv + BN + ReLU layers (receptive field 1 + 2 * sum(dilations)) and a 1x1 classifier."""
    layers: list[nn.Module] = []
    channels = 3
    for d in dilations:
        layers += [nn.Conv2d(channels, width, 3, padding=d, dilation=d, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True)]
        channels = width
    layers.append(nn.Conv2d(channels, num_classes, 1))
    return nn.Sequential(*layers)


def _stack(ds: ScaleScenes) -> tuple[torch.Tensor, torch.Tensor]:
    images, targets = zip(*(ds[i] for i in range(len(ds))))
    return torch.stack(images), torch.stack(targets)


def evaluate(model: nn.Module, ds: ScaleScenes, images: torch.Tensor, targets: torch.Tensor) -> dict[str, float]:
    """mIoU over the data set, and pixel accuracy on object pixels binned by object radius."""
    k = len(ds.classes)
    model.eval()
    with torch.no_grad():
        pred = torch.cat([model(images[i : i + 16]).argmax(1) for i in range(0, len(images), 16)])
    confusion = torch.bincount(targets.flatten() * k + pred.flatten(), minlength=k * k).view(k, k).double()
    iou = confusion.diag() / (confusion.sum(0) + confusion.sum(1) - confusion.diag())
    result = {"miou": float(iou.nanmean())} | {f"iou_{name}": float(v) for name, v in zip(ds.classes, iou)}
    r_min, r_max = ds.radius_range
    edges = torch.logspace(torch.log10(torch.tensor(r_min)), torch.log10(torch.tensor(r_max)), 4)
    hits, counts = torch.zeros(3), torch.zeros(3)
    for i in range(len(ds)):
        instances, records = ds.objects(i)
        for record in records:
            mask = instances == record["id"]
            b = min(int(torch.bucketize(torch.tensor(record["size"]), edges[1:-1])), 2)
            hits[b] += (pred[i][mask] == record["class"]).sum()
            counts[b] += mask.sum()
    for b in range(3):
        result[f"acc_radius_{edges[b]:.0f}-{edges[b + 1]:.0f}px"] = float(hits[b] / counts[b])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--train-images", type=int, default=300)
    parser.add_argument("--val-images", type=int, default=60)
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--dilations", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--no-distractors", action="store_true", help="plain building facades, no road patches")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    start = time.perf_counter()
    train = ScaleScenes(args.train_images, size=args.size, seed=0, distractors=not args.no_distractors)
    images, targets = _stack(train)
    print(f"generated {len(train)} scenes at {args.size}x{args.size} in {time.perf_counter() - start:.2f} s")
    val = ScaleScenes(args.val_images, size=args.size, seed=1, distractors=not args.no_distractors)
    val_images, val_targets = _stack(val)

    model = tiny_baseline(len(train.classes), dilations=tuple(args.dilations))
    optimiser = torch.optim.Adam(model.parameters(), lr=2e-3)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, max_lr=2e-3, total_steps=args.steps)
    loss_fn = nn.CrossEntropyLoss(ignore_index=train.ignore_index)
    start = time.perf_counter()
    for step in range(args.steps):
        model.train()
        batch = torch.randint(len(images), (args.batch,))
        loss = loss_fn(model(images[batch]), targets[batch])
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        schedule.step()
        if (step + 1) % 100 == 0:
            print(f"step {step + 1}: loss {loss.item():.3f} ({time.perf_counter() - start:.0f} s)", flush=True)
    for name, value in evaluate(model, val, val_images, val_targets).items():
        print(f"{name}: {value:.3f}")


if __name__ == "__main__":
    main()
