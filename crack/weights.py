"""Pretrained MobileNetV2 weights: torchvision's (downloaded once, then cached) or a local file."""

from __future__ import annotations

import logging
from pathlib import Path
from urllib.parse import urlparse

import torch
from torch import nn
from torchvision.models import MobileNet_V2_Weights

log = logging.getLogger(__name__)


class WeightsUnavailableError(RuntimeError):
    """The pretrained weights could neither be downloaded nor found in the cache."""


def torchvision_cache_path(name: str) -> Path:
    """Where torch.hub looks for (and downloads) the torchvision weights file ``name``."""
    url = MobileNet_V2_Weights[name].url
    return Path(torch.hub.get_dir()) / "checkpoints" / Path(urlparse(url).path).name


def download_torchvision_weights(name: str) -> dict[str, torch.Tensor]:
    """torchvision's ImageNet state_dict ``name`` (e.g. IMAGENET1K_V1), from the cache or the web."""
    try:
        weights = MobileNet_V2_Weights[name]
    except KeyError:
        names = [w.name for w in MobileNet_V2_Weights]
        raise ValueError(
            f"model.weights={name!r} is not a torchvision MobileNetV2 weights name: {names}"
        ) from None
    try:
        return weights.get_state_dict(progress=True)
    except OSError as error:  # URLError, no route, DNS failure, ...
        raise WeightsUnavailableError(
            f"Could not download the MobileNetV2 {name} weights ({error}). Either place the file "
            f"{weights.url} at {torchvision_cache_path(name)}, or pass a local state_dict with "
            "model.weights_path=FILE (e.g. ../shared/weights/mobilenet_v2_imagenet_features.pth), "
            "or train from scratch with model.weights=null."
        ) from error


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """A state_dict from a file, without running pickled code (``weights_only``)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"model.weights_path={str(path)!r} does not exist.")
    state = torch.load(path, map_location="cpu", weights_only=True)
    # Accept Lightning checkpoints and {"model": state_dict} wrappers as well as bare state_dicts.
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict):
        raise ValueError(f"{path} does not hold a state_dict (found {type(state).__name__}).")
    return state


def load_backbone_weights(features: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Copy the ``features.*`` tensors of a torchvision MobileNetV2 state_dict into ``features``.

    The ImageNet classifier (``classifier.*``) is dropped on purpose: the crack head replaces it.
    Missing and unexpected keys are reported; a file whose shapes do not fit is refused.
    """
    backbone = {
        k.removeprefix("features."): v for k, v in state.items() if k.startswith("features.")
    }
    ignored = sorted(k for k in state if not k.startswith(("features.", "classifier.")))
    if not backbone:
        raise ValueError(
            f"{source} has no 'features.*' keys: it is not a torchvision MobileNetV2 state_dict "
            f"(first keys: {list(state)[:5]})."
        )
    expected = features.state_dict()
    wrong = {
        k: (tuple(v.shape), tuple(expected[k].shape))
        for k, v in backbone.items()
        if k in expected and v.shape != expected[k].shape
    }
    if wrong:
        raise ValueError(f"{source} does not fit MobileNetV2 (width 1.0): shape mismatches {wrong}")
    result = features.load_state_dict(backbone, strict=False)
    if result.missing_keys:
        log.warning(
            "%s lacks %d backbone tensors, left at random init: %s",
            source,
            len(result.missing_keys),
            result.missing_keys[:10],
        )
    unexpected = ignored + [f"features.{k}" for k in result.unexpected_keys]
    if unexpected:
        log.warning(
            "%s has %d unexpected keys, ignored: %s", source, len(unexpected), unexpected[:10]
        )
    log.info(
        "Loaded %d backbone tensors from %s", len(backbone) - len(result.unexpected_keys), source
    )
