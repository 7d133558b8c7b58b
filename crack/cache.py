"""What training computes once and stores instead of every epoch, decided in one place.

- **features**: the outputs of the backbone's blocks that stay frozen for the whole run. A
  frozen block computes the same output for the same image in every epoch and every run, so
  `FeatureCache` has them computed once and training runs only the rest. With orientation
  augmentation (flips, quarter turns) each image's outputs are stored for each of its variants,
  and each epoch reads the variant the sampler chose: the same as computing it, exactly.
- **images**: each file decoded and resized once (uint8), when images must go through the whole
  network every epoch (colour augmentation, or every block trainable).

`plan_cache` makes the decision; `FeatureCache` carries it out at setup: it builds or reuses the
store (`crack.store`), tells the datamodule to serve it and the model where its rows enter the
backbone. The model and the datamodule know nothing of caching. A store's key is everything its
rows depend on: the files' contents (their SHA-256 from indexing) in order, the preprocessing,
and for features the frozen blocks' weights, where they end and the variants stored.

``data.cache_dir`` defaults to ``$CRACK_CACHE_DIR`` if set (the tests point it at a temporary
folder), else ``.cache/crack``. Old stores are never deleted automatically: remove the folder to
reclaim the space.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import lightning as L
import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from crack.data import ImageFileDataset, StoredInputs
from crack.preprocessing import Augmentation, Preprocessing, dihedral
from crack.runtime import ForwardRunner, check_options, runtime_version
from crack.splits import Sample
from crack.store import files_digest, stored_arrays

log = logging.getLogger(__name__)

# Part of every key: bump it when what a store holds changes meaning.
STORE_VERSION = 2


@dataclass(frozen=True)
class CachePlan:
    """What to store: the outputs of ``features[:block]`` (``block > 0``), else decoded images
    (``images``), else nothing; ``reason`` says why the features are not stored."""

    block: int
    images: bool
    reason: str = ""


def plan_cache(
    enabled: bool, augmentation: Augmentation, trainable_blocks: int | None, n_blocks: int
) -> CachePlan:
    """The decision. ``trainable_blocks``: the most blocks any milestone unfreezes (0: the
    backbone stays frozen); None: every block trains (no staged unfreezing)."""
    if not enabled:
        return CachePlan(0, False, "data.cache=false")
    if augmentation.random_steps():
        why = "random augmentation is on (data.augment: colour), so frozen blocks see new inputs every epoch"
    elif trainable_blocks is None:
        why = "every block trains (no staged unfreezing, e.g. experiment=demo)"
    elif trainable_blocks >= n_blocks:
        why = "a milestone unfreezes every block"
    else:
        return CachePlan(n_blocks - trainable_blocks, False)
    return CachePlan(0, True, f"{why}; the decoded images are stored instead")


def state_digest(module: nn.Module) -> str:
    """SHA-256 of a module's state_dict: names, dtypes, shapes and values (not memory layout)."""
    digest = hashlib.sha256()
    for name, tensor in module.state_dict().items():
        tensor = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        digest.update(tensor.flatten().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def feature_dtype(pooled: bool) -> torch.dtype:
    """How frozen-block outputs are stored.

    Pooled features (bounded by ReLU6) only feed the linear head: float16 halves the store and
    leaves the logits and the loss trajectory the same within 1e-3 (tests/test_cache.py).
    Activations inside the backbone feed blocks that may train, whose BatchNorm divides by batch
    statistics and can amplify float16's rounding into a different trajectory: float32.
    """
    return torch.float16 if pooled else torch.float32


def _images_key(root: Path, samples: Sequence[Sample], image_size: int) -> dict:
    return {
        "version": STORE_VERSION,
        "images": len(samples),
        "files_sha256": files_digest(root, samples),
        "resize": [image_size, image_size, "bilinear", "antialias"],
    }


def _loader(images: ImageFileDataset, batch_size: int, num_workers: int) -> DataLoader:
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

    def batches() -> Iterator[dict[str, np.ndarray]]:
        for pixels, _ in _loader(images, batch_size, num_workers):
            yield {"images": pixels.numpy()}

    key = _images_key(images.root, images.samples, image_size)
    arrays, reused = stored_arrays(cache_dir / "images", key, len(images), batches)
    _log_store("Decoded images", arrays["images"], reused, start)
    return arrays["images"]


class FrozenBlocks(nn.Module):
    """``model.features_until(images, block, statistics)`` as a module of its own that returns
    a tuple: what `crack.runtime.ForwardRunner` runs to fill the feature store."""

    def __init__(self, model: nn.Module, block: int, statistics: bool) -> None:
        super().__init__()
        self.model, self.block, self.statistics = model, block, statistics

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        outputs = self.model.features_until(images, self.block, statistics=self.statistics)
        return outputs if self.statistics else (outputs,)


def feature_store(
    cache_dir: Path,
    images: ImageFileDataset,
    preprocessing: Preprocessing,
    model: nn.Module,
    block: int,
    batch_size: int,
    num_workers: int,
    variants: Sequence[int] = (0,),
    inference: dict | None = None,
) -> dict[str, Path]:
    """``model.features_until(dihedral(image, v), block)`` for every image and each ``v``.

    Returns the paths of the arrays: ``features``, rows of (len(variants), *output shape), and,
    when the model's ``statistics_blocks`` are all frozen (below ``block``), ``statistics``:
    each image's block statistics for the unfamiliar-photo score (`crack.familiarity`), got in
    the same pass. ``images`` must return ``preprocessing.transform()`` of each file. The
    blocks run in eval mode (as StagedUnfreezing keeps frozen blocks) on the model's device,
    through the runtime ``inference`` chooses (`crack.runtime`: ONNX Runtime on a CPU, float32
    by default); the features are stored as `feature_dtype`.
    """
    start = time.perf_counter()
    prefix = model.features[:block]
    pooled = block == len(model.features)
    dtype = feature_dtype(pooled)
    statistics = max(model.statistics_blocks) < block
    size = preprocessing.image_size
    inference = {"runtime": "auto", "precision": "32", **(inference or {})}
    key = {
        **_images_key(images.root, images.samples, size),
        "mean": list(preprocessing.mean),
        "std": list(preprocessing.std),
        "block": block,
        "pooled": pooled,
        "variants": list(variants),
        "statistics_blocks": list(model.statistics_blocks) if statistics else None,
        "weights_sha256": state_digest(prefix),
        "dtype": str(dtype),
        # Runtimes round differently (by about 1e-6): each has stores of its own.
        "runtime": runtime_version(**inference, device=model.device),
    }

    def batches() -> Iterator[dict[str, np.ndarray]]:
        prefix.eval()
        # Built only when the store is: exporting to ONNX Runtime takes about a second.
        runner = ForwardRunner(
            FrozenBlocks(model, block, statistics),
            torch.zeros(2, 3, size, size),
            device=model.device,
            **inference,
        )
        log.info("Frozen blocks features[:%d] run by %s", block, runner.name)
        for pixels, _ in _loader(images, batch_size, num_workers):
            rows = {}
            outputs = []
            if statistics:  # of the image as it is: variants[0] is always 0
                first, described = runner(pixels)
                rows["statistics"] = described.cpu().numpy()
                outputs.append(first)
            outputs += [runner(dihedral(pixels, v))[0] for v in variants[len(outputs) :]]
            rows["features"] = torch.stack(outputs, 1).to("cpu", dtype).numpy()
            yield rows

    arrays, reused = stored_arrays(cache_dir / "features", key, len(images), batches)
    shown = f" in {len(variants)} orientations" if len(variants) > 1 else ""
    _log_store(f"Outputs of features[:{block}]{shown}", arrays["features"], reused, start)
    return arrays


def _log_store(what: str, path: Path, reused: bool, start: float) -> None:
    shape = np.load(path, mmap_mode="r").shape
    action = "reused" if reused else "built"
    log.info(
        "%s of %d images %s in %.1f s: %s (%s per image, %.0f MB)",
        what, shape[0], action, time.perf_counter() - start, path.parent,
        "x".join(map(str, shape[1:])), path.stat().st_size / 2**20,
    )  # fmt: skip


class FeatureCache(L.Callback):
    """Train on stored outputs of the backbone's frozen first blocks instead of on images.

    The blocks that no staged-unfreezing milestone ever unfreezes, ``features[:k]``, are
    computed once per image (and orientation); the datamodule then serves their outputs and the
    model starts at block ``k``. With no milestones that is the whole backbone, stored
    average-pooled; for ``experiment=finetune`` (last 4 blocks of MobileNetV2) the activation
    entering ``features[15]``. Validation and test take the same path; the checkpoint stays a
    whole model. When no block stays frozen or colour augmentation is on, the decoded images are
    stored instead; with ``enabled=False`` nothing is. The log says which, and why.

    Args:
        milestones: the StagedUnfreezing milestones (``conf/callbacks/default.yaml`` passes the
            same list); None when there is no staged unfreezing and every block trains.
        enabled: ``data.cache``.
        inference: ``{runtime, precision}`` of the frozen blocks' pass (`crack.runtime`).
    """

    def __init__(
        self,
        milestones: Sequence[dict] | None = (),
        enabled: bool = True,
        inference: dict | None = None,
    ) -> None:
        self.trainable_blocks = (
            None if milestones is None else max((m["blocks"] for m in milestones), default=0)
        )
        self.enabled = enabled
        inference = inference or {}
        runtime, precision = check_options(
            inference.get("runtime", "auto"), inference.get("precision", "32")
        )
        self.inference = {"runtime": runtime, "precision": precision}
        self._said = ""

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        datamodule = trainer.datamodule
        preprocessing = datamodule.preprocessing
        n_blocks = len(pl_module.features)
        plan = plan_cache(self.enabled, preprocessing.augmentation, self.trainable_blocks, n_blocks)
        stored = None
        if plan.block or plan.images:
            # The stores are built on the device the model will train on.
            pl_module.to(trainer.strategy.root_device)
            stored = self._on_rank_zero_first(
                trainer, lambda: self._build(datamodule, pl_module, plan, self.inference)
            )
        datamodule.serve(stored)
        pl_module.input_block = plan.block
        if plan.block:
            what = "pooled outputs" if plan.block == n_blocks else "outputs"
            self._say(f"Feature cache on: training on the stored {what} of features[:{plan.block}]")
        else:
            self._say(f"Feature cache off: {plan.reason}")

    @staticmethod
    def _build(datamodule, model: nn.Module, plan: CachePlan, inference: dict) -> StoredInputs:
        settings, preprocessing = datamodule.settings, datamodule.preprocessing
        cache_dir, batch, workers = datamodule.cache_dir, settings.batch_size, settings.num_workers
        # One store for all splits, built in one pass: one set of worker processes.
        if plan.block:
            images = datamodule.files_dataset(preprocessing.transform())
            variants = preprocessing.augmentation.variants()
            arrays = feature_store(
                cache_dir, images, preprocessing, model, plan.block, batch, workers, variants,
                inference,
            )  # fmt: skip
            return StoredInputs(arrays["features"], True, tuple(variants), arrays.get("statistics"))
        images = datamodule.files_dataset(preprocessing.resize())
        return StoredInputs(
            image_store(cache_dir, images, preprocessing.image_size, batch, workers)
        )

    @staticmethod
    def _on_rank_zero_first(trainer: L.Trainer, build):
        """Under DDP, rank 0 builds the store while the others wait, then they reuse it."""
        if trainer.world_size == 1:
            return build()
        if not trainer.is_global_zero:
            trainer.strategy.barrier("cache")
        stored = build()
        if trainer.is_global_zero:
            trainer.strategy.barrier("cache")
        return stored

    def _say(self, message: str) -> None:
        if message != self._said:  # once, not again at the test stage
            log.info(message)
            self._said = message
