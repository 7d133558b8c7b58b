"""Inference-mode BatchNorm computed inside the convolution before it, for blocks that train.

A BatchNorm layer in inference mode multiplies each channel by a scale and adds a shift, both
from its running statistics, weight and bias; after a convolution, that is the convolution with
its filters scaled and the shift as its bias: the same function, with one operator less forward
and backward. Gradients still reach the convolution's weight and the BatchNorm's weight and
bias, through the scaling. `StagedUnfreezing` folds the blocks it unfreezes with
``batchnorm=eval``: a fine-tuning step of the last 4 MobileNetV2 blocks then takes 16% less
time (``python -m benchmarks.finetune_step``). The modules and their state_dict stay as they
are: only how their ``nn.Sequential`` runs them changes, and `unfold` puts that back.
"""

from __future__ import annotations

from itertools import pairwise
from types import MethodType

import torch
from torch import nn
from torch.nn import functional as F


def scale_and_shift(bn: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    """Per channel, what an inference-mode BatchNorm multiplies by and then adds."""
    scale = bn.weight * torch.rsqrt(bn.running_var + bn.eps)
    return scale, bn.bias - bn.running_mean * scale


def conv_batchnorm(conv: nn.Conv2d, bn: nn.BatchNorm2d, x: torch.Tensor) -> torch.Tensor:
    """``bn(conv(x))`` for ``bn`` in inference mode, as one convolution."""
    if conv.padding_mode != "zeros":  # nn.Conv2d pads those itself before convolving
        return bn(conv(x))
    scale, shift = scale_and_shift(bn)
    weight = conv.weight * scale.view(-1, 1, 1, 1)
    bias = shift if conv.bias is None else shift + conv.bias * scale
    return F.conv2d(x, weight, bias, conv.stride, conv.padding, conv.dilation, conv.groups)


def _folded_forward(self: nn.Sequential, x: torch.Tensor) -> torch.Tensor:
    """``nn.Sequential.forward``, with each convolution followed by an inference-mode
    BatchNorm run as one (a BatchNorm in training mode runs as itself)."""
    layers = list(self)
    i = 0
    while i < len(layers):
        layer = layers[i]
        after = layers[i + 1] if i + 1 < len(layers) else None
        if (
            type(layer) is nn.Conv2d
            and type(after) is nn.BatchNorm2d
            and not after.training
            and after.track_running_stats
            and after.affine
        ):
            x = conv_batchnorm(layer, after, x)
            i += 2
        else:
            x = layer(x)
            i += 1
    return x


def _foldable(module: nn.Module) -> bool:
    layers = list(module.children())
    return isinstance(module, nn.Sequential) and any(
        type(a) is nn.Conv2d and type(b) is nn.BatchNorm2d for a, b in pairwise(layers)
    )


def fold(module: nn.Module) -> None:
    """Run every ``nn.Sequential`` in ``module`` that holds a convolution followed by a
    BatchNorm with the pair as one convolution, whenever that BatchNorm is in inference mode."""
    for sequence in module.modules():
        if _foldable(sequence):
            # An instance attribute: nn.Module.__call__ runs it instead of the class's forward.
            sequence.forward = MethodType(_folded_forward, sequence)


def unfold(module: nn.Module) -> None:
    """Undo `fold`: every ``nn.Sequential`` in ``module`` runs its layers one by one again."""
    for sequence in module.modules():
        if isinstance(sequence, nn.Sequential):
            sequence.__dict__.pop("forward", None)


def is_folded(module: nn.Module) -> bool:
    """Whether `fold` applies to some part of ``module``."""
    return any("forward" in m.__dict__ for m in module.modules() if isinstance(m, nn.Sequential))
