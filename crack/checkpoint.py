"""Reading a trained checkpoint back: the model and the data settings it was trained with."""

from __future__ import annotations

import pickle
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
    data_state: dict  # CrackDataModule.state_dict() of training (CrackDataModule.for_evaluation)


def read_checkpoint(path: str | Path) -> dict:
    """Load a checkpoint file as plain data, without running pickled code (``weights_only``)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"ckpt={str(path)!r} does not exist.")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        # torch's message suggests weights_only=False: exactly what must not be done here.
        detail = [line for line in str(error).splitlines() if "GLOBAL" in line]
        raise ValueError(
            f"ckpt={str(path)!r} is not a readable checkpoint: it holds pickled objects other "
            "than tensors and plain data, which could run code when loaded, so it is refused. "
            f"Use a checkpoint written by train.py. {' '.join(detail)}"
        ) from error
    except Exception as error:
        raise ValueError(
            f"ckpt={str(path)!r} is not a readable checkpoint (truncated or corrupted?): {error}"
        ) from error
    expected = (DATA_STATE_KEY, "state_dict", "hyper_parameters")
    if not isinstance(checkpoint, dict) or any(key not in checkpoint for key in expected):
        found = sorted(checkpoint)[:10] if isinstance(checkpoint, dict) else type(checkpoint)
        raise ValueError(
            f"ckpt={str(path)!r} is not a crack classifier checkpoint written by train.py: "
            f"expected the entries {list(expected)}, found {found}."
        )
    return checkpoint


def _load_state_dict(model: CrackClassifier, state_dict: dict, path: str | Path) -> None:
    """``model.load_state_dict`` with an error that says the checkpoint is of another model."""
    try:
        model.load_state_dict(state_dict)
    except RuntimeError as error:
        raise ValueError(
            f"ckpt={str(path)!r} holds the weights of another model, not of this "
            f"crack classifier. {' '.join(str(error).split())[:400]}"
        ) from error


def load_trained_model(path: str | Path) -> TrainedModel:
    """Rebuild the model, preprocessing, class names and split stored in a checkpoint."""
    checkpoint = read_checkpoint(path)
    # The weights come from the checkpoint: never download or read the pretrained ones again.
    hparams = {**checkpoint["hyper_parameters"], "weights": None, "weights_path": None}
    try:
        model = CrackClassifier(**hparams)
    except TypeError as error:
        raise ValueError(
            f"ckpt={str(path)!r} is the checkpoint of another model: its hyperparameters "
            f"{sorted(checkpoint['hyper_parameters'])} do not fit CrackClassifier ({error})."
        ) from error
    model.on_load_checkpoint(checkpoint)
    _load_state_dict(model, checkpoint["state_dict"], path)
    model.eval()
    data = checkpoint[DATA_STATE_KEY]
    return TrainedModel(
        model=model,
        preprocessing=Preprocessing.for_inference(data["preprocessing"]),
        classes=list(data["classes"]),
        root=Path(data["root"]),
        samples=[Sample.from_row(row) for row in data["manifest"]],
        data_state=data,
    )


def load_weights_from(model: CrackClassifier, path: str | Path) -> None:
    """Start ``model`` from the weights of a trained checkpoint (``init_from``)."""
    checkpoint = read_checkpoint(path)
    model.on_load_checkpoint(checkpoint)
    _load_state_dict(model, checkpoint["state_dict"], path)
