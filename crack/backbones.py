"""The backbones a crack classifier can be built on, and what a backbone must provide.

The contract, in one place. A backbone is a torchvision classification model whose

- ``features`` is an ``nn.Sequential`` of blocks, from the image to a ``channels``-deep map;
  staged unfreezing counts these blocks (``blocks: 2`` is the last two), the feature cache cuts
  between them, and export, prediction and the unfamiliar-photo statistics run them in order;
- pretrained weights are a torchvision ``WeightsEnum`` whose state_dict holds the blocks under
  ``features.*`` (the ImageNet classifier, ``classifier.*``, is dropped: the crack head replaces
  it);
- ``statistics_blocks`` name the blocks after which the activations' per-channel mean and
  standard deviation describe a photo for the unfamiliar-photo score (`crack.familiarity`):
  intermediate blocks below those that fine-tuning unfreezes (MobileNetV2's blocks 8, 9 and 10,
  at stride 16: fitted on 600 METU photos they flag more SDNET wall tiles than blocks 3, 6 and
  10, the choice before, and fewer unseen METU photos; experiments/RESULTS.md, Q10).
  ``model.statistics_blocks`` overrides them.

Adding one is an entry in `BACKBONES` (and, if wanted, a line in the README's table).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import nn
from torchvision.models import (
    EfficientNet_B0_Weights,
    MobileNet_V2_Weights,
    MobileNet_V3_Large_Weights,
    WeightsEnum,
    efficientnet_b0,
    mobilenet_v2,
    mobilenet_v3_large,
)

from crack.errors import UserError


@dataclass(frozen=True)
class Backbone:
    """A torchvision model used for its ``features`` (see the module docstring)."""

    name: str
    build: Callable[..., nn.Module]  # the torchvision constructor, called with weights=None
    weights: type[WeightsEnum]  # its pretrained weights (IMAGENET1K_V1, ...)
    channels: int  # output channels of ``features``: the head's input size
    statistics_blocks: tuple[int, ...]  # see the module docstring

    def features(self) -> nn.Sequential:
        """The blocks, randomly initialised."""
        return self.build(weights=None).features


BACKBONES = {
    b.name: b
    for b in (
        # 19 blocks
        Backbone("mobilenet_v2", mobilenet_v2, MobileNet_V2_Weights, 1280, (8, 9, 10)),
        # 17 blocks
        Backbone(
            "mobilenet_v3_large",
            mobilenet_v3_large,
            MobileNet_V3_Large_Weights,
            960,
            (3, 6, 10),
        ),
        # 9 stages
        Backbone(
            "efficientnet_b0", efficientnet_b0, EfficientNet_B0_Weights, 1280, (2, 3, 4, 5, 6)
        ),
    )
}
DEFAULT_BACKBONE = "mobilenet_v2"  # the method of this project

# The statistics blocks of checkpoints written before ``statistics_blocks`` was a hyperparameter
# (crack.checkpoint), where they differ from today's defaults.
EARLIER_STATISTICS_BLOCKS = {"mobilenet_v2": (3, 6, 10)}


def get_backbone(name: str) -> Backbone:
    """The backbone called ``name`` (``model.backbone``)."""
    try:
        return BACKBONES[name]
    except KeyError:
        raise UserError(
            f"model.backbone={name!r} is not a known backbone: choose one of {sorted(BACKBONES)}."
        ) from None
