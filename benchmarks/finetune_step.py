"""How long one stage-2 training step of `experiment=finetune` takes, and on what.

    python -m benchmarks.finetune_step [--blocks 4] [--batch-size 64] [--profile] [--pieces 8 16]

The step `finetune` repeats: the last ``--blocks`` blocks of MobileNetV2 (random weights: the
speed does not depend on them), BatchNorm in inference mode as `StagedUnfreezing` keeps it,
forward from a batch of stored activations (the input of those blocks at 224 px), pooled, a
one-logit head, backward. Timed in bfloat16 autocast and float32, channels-last and not, and
with the BatchNorm layers replaced by their affine equivalent (scale and shift from the running
statistics, the same function) or folded into the convolution before them (weights scaled, the
shift as the bias: one operator less forward and backward, gradients still reaching the original
weights). ``--profile`` prints which operators the bf16 step spends on.
"""

from __future__ import annotations

import argparse
import copy
import time

import torch
from torch import nn
from torchvision.models import mobilenet_v2

from crack.allocator import keep_freed_memory
from crack.folding import fold, scale_and_shift


class AffineBatchNorm(nn.Module):
    """An inference-mode BatchNorm written as ``x * scale + shift``: the same values."""

    def __init__(self, bn: nn.BatchNorm2d) -> None:
        super().__init__()
        self.bn = bn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale, shift = scale_and_shift(self.bn)
        shape = (1, -1, 1, 1)
        return torch.addcmul(shift.view(shape).to(x.dtype), x, scale.view(shape).to(x.dtype))


def _affine(module: nn.Module) -> None:
    for name, child in module.named_children():
        if isinstance(child, nn.BatchNorm2d):
            setattr(module, name, AffineBatchNorm(child))
        else:
            _affine(child)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.finetune_step")
    parser.add_argument("--blocks", type=int, default=4, help="unfrozen blocks (finetune: 4)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=5, help="timed steps per setting")
    parser.add_argument("--rounds", type=int, default=3, help="times every setting is timed")
    parser.add_argument("--profile", action="store_true")
    parser.add_argument(
        "--pieces", type=int, nargs="*", default=[],
        help="also time the folded bf16 channels-last step run on the batch in pieces of these "
        "sizes, gradients accumulated (as forward passes run on a CPU, crack.runtime)",
    )  # fmt: skip
    args = parser.parse_args()
    keep_freed_memory()  # as train.py does
    features = mobilenet_v2().features.eval()
    start = len(features) - args.blocks
    part, head = features[start:], nn.Linear(1280, 1)
    with torch.no_grad():
        stored = features[:start](torch.randn(args.batch_size, 3, 224, 224))
    print(
        f"last {args.blocks} blocks, input {tuple(stored.shape)}, {torch.get_num_threads()} threads"
    )

    affine, folded = copy.deepcopy(part), copy.deepcopy(part)
    _affine(affine)
    fold(folded)  # as StagedUnfreezing runs the blocks it unfreezes
    variants = {"": part, ", affine BatchNorm": affine, ", BatchNorm folded": folded}

    def step(blocks: nn.Module, channels_last: bool, bf16: bool, piece: int | None = None) -> None:
        x = stored.contiguous(memory_format=torch.channels_last) if channels_last else stored
        for part_x in x.split(piece or len(x)):
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                loss = head(blocks(part_x).mean((2, 3))).sum()
            loss.backward()

    def timed(
        blocks: nn.Module, channels_last: bool, bf16: bool, piece: int | None = None
    ) -> float:
        blocks.to(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
        for _ in range(2):  # kernel choice, allocator
            step(blocks, channels_last, bf16, piece)
        begin = time.perf_counter()
        for _ in range(args.steps):
            step(blocks, channels_last, bf16, piece)
        return (time.perf_counter() - begin) / args.steps * 1e3

    # Every setting once per round, rounds repeated: a slow minute of a shared machine then
    # shows as spread, not as a difference between settings.
    settings = {
        f"{'bf16' if bf16 else 'float32'}, {layout}{variant}": (
            blocks, layout == "channels-last", bf16
        )
        for variant, blocks in variants.items()
        for layout in ("channels-last", "NCHW")
        for bf16 in (True, False)
    }  # fmt: skip
    for piece in args.pieces:
        settings[f"bf16, channels-last, BatchNorm folded, in pieces of {piece}"] = (
            folded, True, True, piece
        )  # fmt: skip
    times: dict[str, list[float]] = {label: [] for label in settings}
    for _ in range(args.rounds):
        for label, setting in settings.items():
            times[label].append(timed(*setting))
    for label, values in times.items():
        spread = f"{min(values):.0f}-{max(values):.0f}"
        print(f"{label:56s} median {sorted(values)[len(values) // 2]:4.0f} ms/step ({spread})")
    if args.profile:
        part.to(memory_format=torch.channels_last)
        with torch.profiler.profile() as profile:
            for _ in range(3):
                step(part, True, True)
        print(profile.key_averages().table(sort_by="self_cpu_time_total", row_limit=12))


if __name__ == "__main__":
    main()
