"""Reading a trained checkpoint back: the model and the data settings it was trained with."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from crack.backbones import DEFAULT_BACKBONE, EARLIER_STATISTICS_BLOCKS
from crack.errors import UserError
from crack.model import CrackClassifier
from crack.preprocessing import Preprocessing
from crack.splits import Sample, unpacked_manifest
from crack.torchfile import load_plain

DATA_STATE_KEY = "CrackDataModule"  # where Lightning stores CrackDataModule.state_dict()
CHECKPOINT_EXPECTED = (
    "a checkpoint written by train.py, e.g. logs/train/<run>/checkpoints/best.ckpt"
)


@dataclass
class TrainedModel:
    """A trained classifier with the data settings that belong to it."""

    model: CrackClassifier
    preprocessing: Preprocessing
    classes: list[str]  # by label: [intact, crack]
    root: Path  # the training data root
    samples: list[Sample]  # the split training used
    data_state: dict  # CrackDataModule.state_dict() of training (CrackDataModule.for_evaluation)


def read_checkpoint(path: str | Path, option: str = "ckpt") -> dict:
    """Load a checkpoint file as plain data, without running pickled code (``weights_only``).

    ``option`` is the setting that named the file (``ckpt``, ``init_from``), for the messages.
    """
    checkpoint = load_plain(path, option, CHECKPOINT_EXPECTED)
    expected = (DATA_STATE_KEY, "state_dict", "hyper_parameters")
    if not isinstance(checkpoint, dict) or any(key not in checkpoint for key in expected):
        found = sorted(checkpoint)[:10] if isinstance(checkpoint, dict) else type(checkpoint)
        raise UserError(
            f"{option}={str(path)!r} is not a crack classifier checkpoint: expected the entries "
            f"{list(expected)}, found {found}. Give {CHECKPOINT_EXPECTED}."
        )
    return checkpoint


def _load_state_dict(
    model: CrackClassifier, state_dict: dict, path: str | Path, option: str = "ckpt"
) -> None:
    """``model.load_state_dict`` with an error that says the checkpoint is of another model."""
    try:
        model.load_state_dict(state_dict)
    except RuntimeError as error:
        raise UserError(
            f"{option}={str(path)!r} holds the weights of another model, not of this "
            f"crack classifier. {' '.join(str(error).split())[:400]}"
        ) from error


def load_trained_model(path: str | Path) -> TrainedModel:
    """Rebuild the model, preprocessing, class names and split stored in a checkpoint."""
    checkpoint = read_checkpoint(path)
    # The weights come from the checkpoint: never download or read the pretrained ones again.
    hparams = {**checkpoint["hyper_parameters"], "weights": None, "weights_path": None}
    backbone = hparams.get("backbone", DEFAULT_BACKBONE)
    hparams.setdefault("statistics_blocks", EARLIER_STATISTICS_BLOCKS.get(backbone))
    try:
        model = CrackClassifier(**hparams)
    except TypeError as error:
        raise UserError(
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
        samples=unpacked_manifest(data["manifest"]),
        data_state=data,
    )


def load_weights_from(model: CrackClassifier, path: str | Path) -> None:
    """Start ``model`` from the weights of a trained checkpoint (``init_from``)."""
    restore_weights(model, read_checkpoint(path, "init_from"), path, "init_from")


def restore_weights(
    model: CrackClassifier, checkpoint: dict, path: str | Path, option: str = "ckpt"
) -> None:
    """Put the weights of ``checkpoint`` (`read_checkpoint` of ``path``) into ``model``, as
    Lightning's ``ckpt_path=`` does."""
    model.on_load_checkpoint(checkpoint)
    _load_state_dict(model, checkpoint["state_dict"], path, option)
