"""Pretrained backbone weights: torchvision's (downloaded once, then cached) or a local file."""

from __future__ import annotations

import logging
import pickle
from pathlib import Path
from urllib.parse import urlparse

import torch
from torch import nn

from crack.backbones import Backbone
from crack.errors import UserError

log = logging.getLogger(__name__)


class WeightsUnavailableError(UserError):
    """The pretrained weights could neither be downloaded nor found in the cache."""


def torchvision_cache_path(backbone: Backbone, name: str) -> Path:
    """Where torch.hub looks for (and downloads) the torchvision weights file ``name``."""
    url = backbone.weights[name].url
    return Path(torch.hub.get_dir()) / "checkpoints" / Path(urlparse(url).path).name


def download_torchvision_weights(backbone: Backbone, name: str) -> dict[str, torch.Tensor]:
    """torchvision's ImageNet state_dict ``name`` (e.g. IMAGENET1K_V1), from the cache or the web."""
    try:
        weights = backbone.weights[name]
    except KeyError:
        names = [w.name for w in backbone.weights]
        raise UserError(
            f"model.weights={name!r} is not a torchvision {backbone.name} weights name: {names}"
        ) from None
    try:
        return weights.get_state_dict(progress=True)
    except OSError as error:  # URLError, no route, DNS failure, ...
        raise WeightsUnavailableError(
            f"Could not download the {backbone.name} {name} weights ({error}). Either place the "
            f"file {weights.url} at {torchvision_cache_path(backbone, name)}, or pass a local "
            "state_dict with model.weights_path=/path/to/weights.pth, or train from scratch with "
            "model.weights=null."
        ) from error


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """A state_dict from a file, without running pickled code (``weights_only``)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise UserError(f"model.weights_path={str(path)!r} does not exist.")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        # torch's own message advises weights_only=False: exactly what must not be done here.
        raise UserError(
            f"model.weights_path={str(path)!r} holds pickled objects other than tensors, which "
            "could run code when loaded, so it is refused. Give a plain state_dict file."
        ) from None
    except Exception as error:
        raise UserError(
            f"model.weights_path={str(path)!r} is not a readable weights file "
            f"({type(error).__name__}). Give a state_dict saved with torch.save."
        ) from error
    # Accept Lightning checkpoints and {"model": state_dict} wrappers as well as bare state_dicts.
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict):
        raise UserError(
            f"model.weights_path={str(path)!r} does not hold a state_dict "
            f"(found {type(state).__name__})."
        )
    return state


def load_backbone_weights(
    features: nn.Module, state: dict[str, torch.Tensor], source: str, backbone: Backbone
) -> None:
    """Copy the ``features.*`` tensors of a torchvision state_dict of ``backbone`` into ``features``.

    The ImageNet classifier (``classifier.*``) is dropped on purpose: the crack head replaces it.
    Missing and unexpected keys are reported; a file whose shapes do not fit is refused.
    """
    tensors = {
        k.removeprefix("features."): v for k, v in state.items() if k.startswith("features.")
    }
    ignored = sorted(k for k in state if not k.startswith(("features.", "classifier.")))
    if not tensors:
        raise UserError(
            f"{source} has no 'features.*' keys: it is not a torchvision {backbone.name} "
            f"state_dict (first keys: {list(state)[:5]}). Check model.weights_path and "
            "model.backbone."
        )
    expected = features.state_dict()
    wrong = {
        k: (tuple(v.shape), tuple(expected[k].shape))
        for k, v in tensors.items()
        if k in expected and v.shape != expected[k].shape
    }
    if wrong:
        first = dict(list(wrong.items())[:3])
        raise UserError(
            f"{source} does not fit {backbone.name}: {len(wrong)} shape mismatches, e.g. {first}. "
            "Check model.weights_path and model.backbone."
        )
    result = features.load_state_dict(tensors, strict=False)
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
        "Loaded %d backbone tensors from %s", len(tensors) - len(result.unexpected_keys), source
    )
