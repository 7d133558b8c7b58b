"""Reading a trained checkpoint back: the model and the data settings it was trained with."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from crack.model import CrackClassifier
from crack.preprocessing import Preprocessing
from crack.splits import Sample

DATA_STATE_KEY = "CrackDataModule"  # where Lightning stores CrackDataModule.state_dict()


@dataclass
class TrainedModel:
    """A trained classifier with the data settings that belong to it."""

    model: CrackClassifier
    preprocessing: Preprocessing
    classes: list[str]  # by label: [intact, crack]
    root: Path  # the training data root
    samples: list[Sample]  # the split training used


def read_checkpoint(path: str | Path) -> dict:
    """Load a checkpoint file as plain data, without running pickled code (``weights_only``)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"ckpt={str(path)!r} does not exist.")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise ValueError(f"ckpt={str(path)!r} is not a readable checkpoint: {error}") from error
    if not isinstance(checkpoint, dict) or DATA_STATE_KEY not in checkpoint:
        raise ValueError(
            f"ckpt={str(path)!r} is not a crack classifier checkpoint written by train.py "
            f"(no {DATA_STATE_KEY!r} entry)."
        )
    return checkpoint


def load_trained_model(path: str | Path) -> TrainedModel:
    """Rebuild the model, preprocessing, class names and split stored in a checkpoint."""
    checkpoint = read_checkpoint(path)
    # The weights come from the checkpoint: never download or read the pretrained ones again.
    hparams = {**checkpoint["hyper_parameters"], "weights": None, "weights_path": None}
    model = CrackClassifier(**hparams)
    model.load_state_dict(checkpoint["state_dict"])
    model.eval()
    data = checkpoint[DATA_STATE_KEY]
    return TrainedModel(
        model=model,
        preprocessing=Preprocessing(**data["preprocessing"]),
        classes=list(data["classes"]),
        root=Path(data["root"]),
        samples=[Sample(p, int(label), split) for p, label, split in data["manifest"]],
    )


def load_weights_from(model: CrackClassifier, path: str | Path) -> None:
    """Start ``model`` from the weights of a trained checkpoint (``init_from``)."""
    model.load_state_dict(read_checkpoint(path)["state_dict"])
