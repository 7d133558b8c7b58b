"""Export a trained classifier to ONNX or TorchScript, with its preprocessing, and check parity.

The exported model takes a batch of preprocessed images ``(N, 3, S, S)`` (resized to ``S`` and
normalised with ``mean``/``std``, as in training) and returns calibrated crack probabilities
``(N,)`` and unfamiliar-photo scores ``(N,)`` (see `crack.familiarity`); the decision threshold
and the score above which a photo is unfamiliar are in its metadata.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from torch import nn

from crack.familiarity import Familiarity, block_statistics
from crack.preprocessing import Preprocessing, load_rgb
from crack.splits import Sample
from crack.synthetic import make_image

FORMATS = ("onnx", "torchscript")
INPUT_NAME = "image"
OUTPUT_NAME = "crack_probability"
FAMILIARITY_NAME = "familiarity"
METADATA_FILE = "crack_metadata.json"  # inside a TorchScript archive (``_extra_files``)


class ProbabilityModel(nn.Module):
    """The network alone, returning crack probabilities and familiarity: what an export holds.

    Built from the classifier's ``features``, ``head``, temperature and familiarity statistics
    only, so that no training code (loss, metrics, Lightning) goes into the export.
    """

    def __init__(
        self,
        features: nn.Module,
        head: nn.Module,
        temperature: torch.Tensor,
        familiarity: Familiarity,
        statistics_blocks: tuple[int, ...],
    ) -> None:
        super().__init__()
        self.features = features
        self.head = head
        self.register_buffer("temperature", temperature.detach().clone())
        self.familiarity = familiarity
        self.statistics_blocks = tuple(statistics_blocks)

    @classmethod
    def of(cls, classifier: nn.Module) -> ProbabilityModel:
        """The parts of a `crack.model.CrackClassifier`, in eval mode."""
        return cls(
            classifier.features,
            classifier.head,
            classifier.temperature,
            classifier.familiarity,
            classifier.statistics_blocks,
        ).eval()

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x, described = block_statistics(self.features, images, self.statistics_blocks)
        logits = self.head(x).squeeze(1)
        return torch.sigmoid(logits / self.temperature), self.familiarity(described)


def model_metadata(
    preprocessing: Preprocessing,
    classes: Sequence[str],
    threshold: float,
    familiarity_threshold: float = float("inf"),
) -> dict[str, str]:
    """What a user of the exported file needs besides the network, as string key/values."""
    return {
        "image_size": str(preprocessing.image_size),
        "mean": json.dumps(list(preprocessing.mean)),
        "std": json.dumps(list(preprocessing.std)),
        "threshold": str(threshold),
        "familiarity_threshold": str(familiarity_threshold),
        "classes": json.dumps(list(classes)),  # by label: [intact, crack]
        "input": f"{INPUT_NAME}: float32 (N, 3, image_size, image_size), RGB in [0, 1], "
        "normalised with mean and std",
        "output": f"{OUTPUT_NAME}: float32 (N,), calibrated crack probability (a crack at and "
        f"above threshold); {FAMILIARITY_NAME}: float32 (N,), how unlike the training photos "
        "(unfamiliar above familiarity_threshold: do not trust the probability)",
    }


def parse_metadata(
    metadata: dict[str, str], source: str
) -> tuple[Preprocessing, list[str], float, float]:
    """Preprocessing, class names, threshold and familiarity threshold from ``model_metadata``
    strings (files exported before familiarity existed flag nothing)."""
    missing = {"image_size", "mean", "std", "threshold", "classes"} - set(metadata)
    if missing:
        raise ValueError(
            f"{source} lacks the metadata {sorted(missing)}: export it with "
            "python export.py ckpt=CHECKPOINT format=onnx"
        )
    preprocessing = Preprocessing(
        image_size=int(metadata["image_size"]),
        mean=json.loads(metadata["mean"]),
        std=json.loads(metadata["std"]),
    )
    familiarity = float(metadata.get("familiarity_threshold", "inf"))
    classes = list(json.loads(metadata["classes"]))
    return preprocessing, classes, float(metadata["threshold"]), familiarity


def export_onnx(
    model: ProbabilityModel,
    path: str | Path,
    preprocessing: Preprocessing,
    classes: Sequence[str],
    threshold: float,
    opset: int = 17,
) -> Path:
    """Write ``model`` as ONNX with a dynamic batch size and the metadata of `model_metadata`."""
    import onnx

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    size = preprocessing.image_size
    example = torch.zeros(2, 3, size, size)
    with warnings.catch_warnings():
        # The TorchScript-based exporter needs no extra package (the torch.export-based one
        # needs onnxscript) and handles this plain CNN fully; it warns that it is not the default.
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        torch.onnx.export(
            model.eval(),
            (example,),
            str(path),
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME, FAMILIARITY_NAME],
            dynamic_axes={
                INPUT_NAME: {0: "batch"},
                OUTPUT_NAME: {0: "batch"},
                FAMILIARITY_NAME: {0: "batch"},
            },
            opset_version=opset,
            dynamo=False,
        )
    exported = onnx.load(str(path))
    metadata = model_metadata(preprocessing, classes, threshold, float(model.familiarity.threshold))
    onnx.helper.set_model_props(exported, metadata)
    onnx.checker.check_model(exported)
    onnx.save(exported, str(path))
    return path


def export_torchscript(
    model: ProbabilityModel,
    path: str | Path,
    preprocessing: Preprocessing,
    classes: Sequence[str],
    threshold: float,
) -> Path:
    """Write ``model`` as TorchScript, the metadata as ``crack_metadata.json`` inside the archive."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    size = preprocessing.image_size
    familiarity = float(model.familiarity.threshold)
    metadata = json.dumps(model_metadata(preprocessing, classes, threshold, familiarity))
    with _torchscript():
        traced = torch.jit.trace(model.eval(), torch.zeros(2, 3, size, size))
        torch.jit.save(traced, str(path), _extra_files={METADATA_FILE: metadata})
    return path


@contextmanager
def _torchscript() -> Iterator[None]:
    # TorchScript is deprecated in favour of torch.export, but it is still what C++ (LibTorch)
    # and PyTorch Mobile runtimes load; the warning on every call is noise to our users.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*torch\.jit.* is deprecated")
        yield


def read_torchscript_metadata(path: str | Path) -> dict[str, str]:
    """The metadata stored by `export_torchscript`."""
    extra = {METADATA_FILE: ""}
    with _torchscript():
        torch.jit.load(str(path), map_location="cpu", _extra_files=extra)
    return json.loads(extra[METADATA_FILE])


def exported_probabilities(path: str | Path, images: torch.Tensor, format: str) -> np.ndarray:
    """Run an exported file (ONNX through onnxruntime, or TorchScript) on preprocessed images."""
    if format == "onnx":
        import onnxruntime

        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return session.run([OUTPUT_NAME], {INPUT_NAME: images.numpy()})[0]
    with _torchscript(), torch.inference_mode():
        return torch.jit.load(str(path), map_location="cpu")(images)[0].numpy()


def max_abs_difference(
    model: ProbabilityModel, path: str | Path, images: torch.Tensor, format: str
) -> float:
    """Largest absolute difference of crack probabilities between ``model`` and its export."""
    with torch.inference_mode():
        expected = model.eval()(images)[0].numpy()
    return float(np.abs(exported_probabilities(path, images, format) - expected).max())


def parity_images(
    root: Path, samples: Sequence[Sample], preprocessing: Preprocessing, count: int
) -> tuple[torch.Tensor, str]:
    """Up to ``count`` preprocessed test-split images, and what they are.

    Where the training data is not at hand (another machine), synthetic concrete photos stand in:
    parity is about the arithmetic of the export, which any realistic input exercises.
    """
    paths = [root / s.path for s in samples if s.split == "test"][:count]
    transform = preprocessing.transform()
    if paths and all(p.is_file() for p in paths):
        images = [transform(load_rgb(p)) for p in paths]
        return torch.stack(images), f"test-split images of {root}"
    rng = np.random.default_rng(0)
    size = preprocessing.image_size
    images = [transform(make_image(rng, size, crack=i % 2 == 1)) for i in range(count)]
    return torch.stack(images), f"synthetic images ({root} is not readable here)"
