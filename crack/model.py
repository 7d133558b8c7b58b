"""The crack classifier: a torchvision backbone (MobileNetV2 by default) with a one-logit head."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from functools import partial

import lightning as L
import torch
from torch import nn
from torchmetrics import MeanMetric, MetricCollection, SumMetric
from torchmetrics.classification import (
    BinaryAccuracy,
    BinaryAUROC,
    BinaryConfusionMatrix,
    BinaryF1Score,
    BinaryPrecision,
    BinaryRecall,
)

from crack.backbones import DEFAULT_BACKBONE, Backbone, get_backbone
from crack.errors import UserError
from crack.familiarity import Familiarity, block_statistics
from crack.weights import download_torchvision_weights, load_backbone_weights, read_state_dict

log = logging.getLogger(__name__)


def decision_metrics() -> MetricCollection:
    """Metrics of the decisions reported on validation and test; inputs are 0./1. decisions
    (crack probability at or over the model's threshold), so the default 0.5 cut keeps them."""
    return MetricCollection(
        {
            "accuracy": BinaryAccuracy(),
            "precision": BinaryPrecision(),
            "recall": BinaryRecall(),
            "f1": BinaryF1Score(),
        }
    )


def _statistics_blocks(blocks: Sequence[int] | None, spec: Backbone, count: int) -> tuple[int, ...]:
    """``model.statistics_blocks``, checked against the backbone's ``count`` blocks."""
    if blocks is None:
        return spec.statistics_blocks
    chosen = tuple(sorted({int(b) for b in blocks}))
    if not chosen or chosen[0] < 0 or chosen[-1] >= count:
        raise UserError(
            f"model.statistics_blocks={list(blocks)} must name blocks 0 to {count - 1} of "
            f"{spec.name}, e.g. {list(spec.statistics_blocks)}."
        )
    return chosen


class CrackClassifier(L.LightningModule):
    """Backbone features -> global average pool -> dropout -> Linear(channels, 1), trained with BCE.

    Args:
        backbone: a name of `crack.backbones.BACKBONES` (``mobilenet_v2``, the default and the
            method of this project; ``mobilenet_v3_large``, ``efficientnet_b0``).
        weights: torchvision weights name for the backbone (``IMAGENET1K_V1``, ``IMAGENET1K_V2``),
            or None for random init. Ignored when ``weights_path`` is given.
        weights_path: a local state_dict file of the backbone (full or features-only).
        dropout: dropout before the final linear layer.
        pos_weight: optional BCE weight of the crack class (for unbalanced data).
        optimizer: a partial optimizer taking the parameters (Hydra ``_partial_``); default Adam.
        scheduler: an optional partial LR scheduler taking the optimizer.
        channels_last: keep convolution weights and inputs channels-last (faster on CPUs and
            tensor-core GPUs; the same results).
        compile: compile the forward pass with ``torch.compile`` (worth it on GPUs; on CPUs the
            compilation takes minutes).
        statistics_blocks: the blocks whose activation statistics describe a photo for the
            unfamiliar-photo score; None for the backbone's (`crack.backbones`).
    """

    def __init__(
        self,
        backbone: str = DEFAULT_BACKBONE,
        weights: str | None = "IMAGENET1K_V1",
        weights_path: str | None = None,
        dropout: float = 0.2,
        pos_weight: float | None = None,
        optimizer: Callable | None = None,
        scheduler: Callable | None = None,
        channels_last: bool = True,
        compile: bool = False,
        statistics_blocks: Sequence[int] | None = None,
    ) -> None:
        super().__init__()
        # The optimizer and scheduler are not needed to rebuild the model and are not plain data;
        # the speed settings are the running machine's choice, not the trained model's.
        self.save_hyperparameters(ignore=["optimizer", "scheduler", "channels_last", "compile"])
        self.optimizer_factory = optimizer or partial(torch.optim.Adam, lr=1e-3)
        self.scheduler_factory = scheduler

        spec = get_backbone(backbone)
        self.features = spec.features()
        self.statistics_blocks = _statistics_blocks(statistics_blocks, spec, len(self.features))
        # The blocks chosen, not None: a later default must not change what a checkpoint means.
        self.hparams["statistics_blocks"] = list(self.statistics_blocks)
        if weights_path:
            state = read_state_dict(weights_path)
            load_backbone_weights(self.features, state, str(weights_path), spec)
        elif weights:
            state = download_torchvision_weights(spec, weights)
            load_backbone_weights(self.features, state, f"torchvision {weights}", spec)
        else:
            log.debug("Backbone starts from random init (model.weights=null)")

        self.head = nn.Sequential(
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Dropout(dropout),
            nn.Linear(spec.channels, 1),
        )
        # Same init as torchvision's classifier.
        nn.init.normal_(self.head[-1].weight, 0, 0.01)
        nn.init.zeros_(self.head[-1].bias)

        # What the outputs mean, fitted on the validation split after training
        # (crack.calibration); buffers, so the checkpoint and the exports carry them.
        self.register_buffer("temperature", torch.tensor(1.0))
        self.register_buffer("threshold", torch.tensor(0.5))
        # The statistics' size, from the blocks up to the last described one.
        described_part = self.features[: max(self.statistics_blocks) + 1]
        with torch.no_grad():
            _, described = block_statistics(
                described_part.eval(), torch.zeros(1, 3, 32, 32), self.statistics_blocks
            )
        self.features.train()
        self.familiarity = Familiarity(described.shape[1])
        self.loss_fn = nn.BCEWithLogitsLoss(
            pos_weight=None if pos_weight is None else torch.tensor([float(pos_weight)])
        )

        self.train_accuracy = BinaryAccuracy()
        self.val_metrics = decision_metrics().clone(prefix="val/")
        self.test_metrics = decision_metrics().clone(prefix="test/")
        self.val_auroc, self.test_auroc = BinaryAUROC(), BinaryAUROC()
        # The last validation's logits and labels: what crack.calibration fits on.
        self.validation_logits: list[tuple[torch.Tensor, torch.Tensor]] = []
        # torchmetrics gathers these across DDP processes: loss and image count are those of the
        # whole validation (test) set, not of one process's share.
        self.val_loss, self.test_loss = MeanMetric(), MeanMetric()
        self.val_images, self.test_images = SumMetric(), SumMetric()
        self.test_confusion = BinaryConfusionMatrix()
        self.test_confusion_matrix: list[list[int]] | None = None

        # Where the inputs of the training, validation and test steps enter the backbone: 0 for
        # images, k for the stored outputs of a frozen features[:k] (crack.cache.FeatureCache).
        # Not a hyperparameter: the checkpoint is always a whole model that takes images.
        self.input_block = 0
        self.channels_last = channels_last
        if channels_last:
            self.to(memory_format=torch.channels_last)
        if compile:
            # forward_from, not the module: the steps and forward both go through it, and the
            # state_dict keys stay as they are. One graph per start block and train/eval mode.
            self.forward_from = torch.compile(self.forward_from)

    def _memory_format(self, x: torch.Tensor) -> torch.Tensor:
        if self.channels_last and x.ndim == 4:
            return x.contiguous(memory_format=torch.channels_last)
        return x

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Crack logits, shape (N,)."""
        return self.forward_from(images, 0)

    def features_until(
        self, images: torch.Tensor, block: int, statistics: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """The activation entering ``features[block]``, as ``forward_from(..., block)`` takes it;
        with ``statistics``, also the photos' block statistics (`crack.familiarity`), which need
        every ``statistics_blocks`` below ``block``.

        At ``block == len(features)`` it is the backbone's output already average-pooled, shape
        (N, channels, 1, 1): pooling is the head's first step, has no parameters, and is the
        identity on a 1x1 map, so ``forward_from`` runs the unchanged head on it.
        """
        x = self._memory_format(images)
        if statistics:
            x, described = block_statistics(self.features[:block], x, self.statistics_blocks)
        else:
            x = self.features[:block](x)
        x = self.head[0](x) if block == len(self.features) else x
        return (x, described) if statistics else x

    def forward_from(self, x: torch.Tensor, block: int) -> torch.Tensor:
        """Crack logits, shape (N,), from ``x = features_until(images, block)``."""
        # The whole backbone as itself, so hooks registered on ``features`` see image batches.
        rest = self.features[block:] if block else self.features
        return self.head(rest(self._memory_format(x))).squeeze(1)

    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        """Calibrated crack probabilities (``temperature`` is 1 until calibration)."""
        return torch.sigmoid(logits / self.temperature)

    def describe(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Crack logits and unfamiliar-photo scores (`crack.familiarity`) of images, one pass."""
        blocks = self.statistics_blocks
        x, described = block_statistics(self.features, self._memory_format(images), blocks)
        return self.head(x).squeeze(1), self.familiarity(described)

    def _step(self, batch: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, ...]:
        inputs, labels = batch
        logits = self.forward_from(inputs, self.input_block)
        loss = self.loss_fn(logits, labels.float())
        probs = self.probabilities(logits)
        return loss, logits, probs, (probs >= self.threshold).float(), labels

    def training_step(
        self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int
    ) -> torch.Tensor:
        loss, _, _, decisions, labels = self._step(batch)
        self.train_accuracy(decisions, labels)
        self.log("train/loss", loss, on_step=True, on_epoch=True, prog_bar=True, sync_dist=True)
        self.log("train/accuracy", self.train_accuracy, on_step=False, on_epoch=True)
        return loss

    def on_validation_epoch_start(self) -> None:
        self.validation_logits = []

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        loss, logits, probs, decisions, labels = self._step(batch)
        self.validation_logits.append((logits.detach().float().cpu(), labels.cpu()))
        self.val_metrics.update(decisions, labels)
        self.val_loss.update(loss, weight=len(labels))
        self.val_images.update(len(labels))
        self.log("val/loss", self.val_loss, on_epoch=True, prog_bar=True)
        self.log("val/num_images", self.val_images, on_epoch=True)
        # Not in the sanity check: its first batches can hold one class only (the split is in
        # file order), where AUROC is undefined and torchmetrics warns on the console.
        if not self.trainer.sanity_checking:
            self.val_auroc.update(probs, labels)
            self.log("val/auroc", self.val_auroc, on_epoch=True)
        self.log_dict(self.val_metrics, on_epoch=True)

    def test_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        loss, _, probs, decisions, labels = self._step(batch)
        self.test_metrics.update(decisions, labels)
        self.test_auroc.update(probs, labels)
        self.test_confusion.update(decisions, labels)
        self.test_loss.update(loss, weight=len(labels))
        self.test_images.update(len(labels))
        self.log("test/loss", self.test_loss, on_epoch=True)
        self.log("test/num_images", self.test_images, on_epoch=True)
        self.log("test/auroc", self.test_auroc, on_epoch=True)
        self.log_dict(self.test_metrics, on_epoch=True)

    def on_test_epoch_end(self) -> None:
        self.test_confusion_matrix = self.test_confusion.compute().tolist()
        self.test_confusion.reset()

    def predict_step(self, batch, batch_idx: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Calibrated crack probabilities and unfamiliar-photo scores for a batch of images
        (or of (images, labels))."""
        images = batch[0] if isinstance(batch, list | tuple) else batch
        logits, scores = self.describe(images)
        return self.probabilities(logits), scores

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        """Checkpoints written before calibration existed: uncalibrated (T 1, threshold 0.5,
        nothing flagged), not refused. Familiarity statistics of other blocks than this model's
        (``init_from`` or a resumed run of an earlier version) are dropped: nothing is flagged
        until calibration fits them again."""
        state = checkpoint["state_dict"]
        own = {
            key: value
            for key, value in self.state_dict().items()
            if key.startswith(("temperature", "threshold", "familiarity."))
        }
        familiarity = {k: v for k, v in own.items() if k.startswith("familiarity.")}
        if any(k in state and state[k].shape != v.shape for k, v in familiarity.items()):
            state.update(familiarity)
        for key, value in own.items():
            state.setdefault(key, value)

    def configure_optimizers(self):
        # Frozen parameters (see StagedUnfreezing) join later as their own param groups.
        params = [p for p in self.parameters() if p.requires_grad]
        optimizer = self.optimizer_factory(params)
        if self.scheduler_factory is None:
            return optimizer
        scheduler = self.scheduler_factory(optimizer)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "monitor": "val/loss"},
        }
