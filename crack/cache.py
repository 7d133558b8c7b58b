"""Work done once and stored: the outputs of the backbone's frozen blocks, and decoded images.

Two kinds of store, each a memory-mapped ``.npy`` array with one row per image, under
``data.cache_dir``:

- ``features/``: what the frozen first blocks of the backbone output for each image. With
  augmentation off, a frozen block computes the same output for the same image in every epoch and
  every run, so `FeatureCache` has it computed once and training runs only the rest.
- ``images/``: each file decoded and resized once (uint8), for when images must go through the
  whole network every epoch (augmentation on, or every block trainable).

``data.cache_dir`` defaults to ``$CRACK_CACHE_DIR`` if set (the tests point it at a temporary
folder), else ``.cache/crack`` under the working directory.

A store is named by a hash of everything its rows depend on: the files' contents in order, the
preprocessing, and for features the weights of the frozen blocks and where they end. Any change
selects a new store; an unchanged setup reuses the old one. Old stores are never deleted
automatically: remove the folder to reclaim the space.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import lightning as L
import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from crack.callbacks import StagedUnfreezing
from crack.preprocessing import Preprocessing

if TYPE_CHECKING:  # data.py imports this module
    from crack.data import ImageFileDataset
    from crack.model import CrackClassifier

log = logging.getLogger(__name__)

# Part of every key: bump it when what a store holds changes meaning.
STORE_VERSION = 1


def feature_dtype(pooled: bool) -> torch.dtype:
    """How frozen-block outputs are stored.

    Pooled features (bounded by ReLU6) only feed the linear head: float16 halves the store and
    leaves the logits and the loss trajectory the same within 1e-3 (tests/test_cache.py).
    Activations inside the backbone feed blocks that may train, whose BatchNorm divides by batch
    statistics and can amplify float16's rounding into a different trajectory: float32.
    """
    return torch.float16 if pooled else torch.float32


def default_cache_dir() -> Path:
    """``$CRACK_CACHE_DIR``, else ``.cache/crack``."""
    return Path(os.environ.get("CRACK_CACHE_DIR") or ".cache/crack")


def file_digests(paths: Sequence[Path]) -> list[str]:
    """SHA-256 of each file's contents."""
    return [hashlib.sha256(Path(p).read_bytes()).hexdigest() for p in paths]


def state_digest(module: nn.Module) -> str:
    """SHA-256 of a module's state_dict: names, dtypes, shapes and values (not memory layout)."""
    digest = hashlib.sha256()
    for name, tensor in module.state_dict().items():
        tensor = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        digest.update(tensor.flatten().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def images_key(images: ImageFileDataset, image_size: int) -> dict:
    """What decoded images depend on: the files' contents in order and the resize."""
    digests = file_digests([images.root / s.path for s in images.samples])
    return {
        "version": STORE_VERSION,
        "images": len(digests),
        "files_sha256": hashlib.sha256("\n".join(digests).encode()).hexdigest(),
        "resize": [image_size, image_size, "bilinear", "antialias"],
    }


def stored_array(
    folder: Path, key: dict, rows: int, batches: Callable[[], Iterator[np.ndarray]]
) -> tuple[Path, bool]:
    """The ``.npy`` store for ``key`` in ``folder``, built from ``batches()`` unless it exists.

    Returns its path and whether it was reused. A store is written under a temporary name and
    renamed once complete, so an interrupted build leaves no store behind and builders running at
    the same time never read each other's partial files.
    """
    name = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:32]
    path = folder / f"{name}.npy"
    if path.is_file():
        return path, True
    folder.mkdir(parents=True, exist_ok=True)
    # The key in words, for a person wondering what a store holds.
    (folder / f"{name}.json").write_text(json.dumps(key, indent=1) + "\n")
    partial = folder / f".{name}.{os.getpid()}.npy"
    try:
        array, filled = None, 0
        for batch in batches():
            if array is None:
                shape = (rows, *batch.shape[1:])
                array = np.lib.format.open_memmap(partial, "w+", batch.dtype, shape)
            array[filled : filled + len(batch)] = batch
            filled += len(batch)
        if array is None or filled != rows:
            raise RuntimeError(f"Building {path}: got {filled} rows, expected {rows}")
        array.flush()
        del array  # close the map before the rename
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)
    return path, False


def _loader(images: Dataset, batch_size: int, num_workers: int) -> DataLoader:
    # A private generator: building a store leaves the global RNG, and so the training order and
    # dropout, exactly as they would be without it.
    return DataLoader(
        images, batch_size=batch_size, num_workers=num_workers, generator=torch.Generator()
    )


def image_store(
    cache_dir: Path, images: ImageFileDataset, image_size: int, batch_size: int, num_workers: int
) -> Path:
    """The decoded and resized images (uint8, N x 3 x size x size) of ``images``, built once.

    ``images`` must return what ``Preprocessing.resize()`` makes of each file.
    """
    start = time.perf_counter()

    def batches() -> Iterator[np.ndarray]:
        for pixels, _ in _loader(images, batch_size, num_workers):
            yield pixels.numpy()

    path, reused = stored_array(
        cache_dir / "images", images_key(images, image_size), len(images), batches
    )
    _log_store("Decoded images", path, reused, start)
    return path


def feature_store(
    cache_dir: Path,
    images: ImageFileDataset,
    preprocessing: Preprocessing,
    model: CrackClassifier,
    block: int,
    batch_size: int,
    num_workers: int,
) -> Path:
    """``model.features_until(image, block)`` for every image of ``images``, computed once.

    ``images`` must return ``preprocessing.transform()`` of each file. The blocks run in eval
    mode (as StagedUnfreezing keeps frozen blocks), on the model's device, in float32; the rows
    are stored as `feature_dtype`.
    """
    start = time.perf_counter()
    prefix = model.features[:block]
    pooled = block == len(model.features)
    dtype = feature_dtype(pooled)
    key = {
        **images_key(images, preprocessing.image_size),
        "mean": list(preprocessing.mean),
        "std": list(preprocessing.std),
        "block": block,
        "pooled": pooled,
        "weights_sha256": state_digest(prefix),
        "dtype": str(dtype),
        "torch": torch.__version__,
    }

    def batches() -> Iterator[np.ndarray]:
        prefix.eval()
        with torch.inference_mode():
            for pixels, _ in _loader(images, batch_size, num_workers):
                output = model.features_until(pixels.to(model.device), block)
                yield output.to("cpu", dtype).numpy()

    path, reused = stored_array(cache_dir / "features", key, len(images), batches)
    _log_store(f"Outputs of features[:{block}]", path, reused, start)
    return path


def _log_store(what: str, path: Path, reused: bool, start: float) -> None:
    shape = np.load(path, mmap_mode="r").shape
    action = "reused" if reused else "built"
    log.info(
        "%s of %d images %s in %.1f s: %s (%s per image, %.0f MB)",
        what, shape[0], action, time.perf_counter() - start, path,
        "x".join(map(str, shape[1:])), path.stat().st_size / 2**20,
    )  # fmt: skip


class StoredDataset(Dataset):
    """Rows ``rows`` of a stored array (default: all), each with its label, through ``transform``.

    The array is memory-mapped on first use in each process, so DataLoader workers map the file
    themselves instead of receiving a copy of it.
    """

    def __init__(
        self,
        path: Path,
        labels: Sequence[int],
        transform: Callable[[torch.Tensor], torch.Tensor],
        rows: Sequence[int] | None = None,
    ) -> None:
        self.path = Path(path)
        self.labels = list(labels)
        self.transform = transform
        self.rows = list(range(len(self.labels)) if rows is None else rows)
        if len(self.rows) != len(self.labels):
            raise ValueError(f"{len(self.rows)} rows but {len(self.labels)} labels")
        self._array: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        if self._array is None:
            self._array = np.load(self.path, mmap_mode="r")
        row = torch.from_numpy(
            np.array(self._array[self.rows[index]])
        )  # a copy: the map is read-only
        return self.transform(row), self.labels[index]

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_array": None}


def to_float32(x: torch.Tensor) -> torch.Tensor:
    """The transform of stored features: float16 rows to the model's float32."""
    return x.float()


class FeatureCache(L.Callback):
    """Train on stored outputs of the backbone's frozen first blocks instead of on images.

    The blocks that no StagedUnfreezing milestone ever unfreezes, ``features[:k]``, are computed
    once per image (see `feature_store`); the datamodule then serves their outputs and the model
    starts at block ``k``. With no milestones that is the whole backbone, stored average-pooled
    (1280 values per image); for ``experiment=finetune`` (last 2 blocks) the activation entering
    ``features[17]``. Validation and test take the same path; the checkpoint stays a whole model.

    It stays off, saying why in one log line, when ``data.cache=false``, when augmentation is on
    (a frozen block then sees a different image every epoch), or when no block stays frozen (no
    StagedUnfreezing, e.g. ``experiment=demo``; or a milestone unfreezes every block).
    """

    def __init__(self) -> None:
        self._said = ""

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        datamodule = trainer.datamodule
        block, why_not = self.frozen_blocks(trainer, pl_module)
        if block:
            datamodule.serve_features(pl_module, block)
            pl_module.input_block = block
            what = "pooled outputs" if block == len(pl_module.features) else "outputs"
            self._say(f"Feature cache on: training on the stored {what} of features[:{block}]")
        else:
            pl_module.input_block = 0
            if datamodule is not None and hasattr(datamodule, "serve_features"):
                datamodule.serve_features(None, 0)
            self._say(f"Feature cache off: {why_not}")

    def _say(self, message: str) -> None:
        if message != self._said:  # once, not again at the test stage
            log.info(message)
            self._said = message

    @staticmethod
    def frozen_blocks(trainer: L.Trainer, pl_module: L.LightningModule) -> tuple[int, str]:
        """How many first blocks to serve stored outputs of, or 0 and the reason why none."""
        datamodule = trainer.datamodule
        if datamodule is None or not hasattr(datamodule, "serve_features"):
            return 0, "no CrackDataModule to serve the stored outputs"
        if not datamodule.hparams.cache:
            return 0, "data.cache=false"
        if datamodule.preprocessing.augmentation.enabled:
            return 0, (
                "augmentation is on (data.augment), so frozen blocks see new inputs every epoch; "
                "the decoded images are cached instead"
            )
        unfreezing = [c for c in trainer.callbacks if isinstance(c, StagedUnfreezing)]
        if not unfreezing:
            return 0, (
                "every block trains (no StagedUnfreezing callback, e.g. experiment=demo); "
                "the decoded images are cached instead"
            )
        block = unfreezing[0].frozen_throughout(len(pl_module.features))
        if block == 0:
            return 0, "a milestone unfreezes every block; the decoded images are cached instead"
        return block, ""
