"""Training callbacks: staged unfreezing of the backbone (on Lightning's BaseFinetuning), curves."""

from __future__ import annotations

import logging
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import lightning as L
from lightning.pytorch.callbacks import BaseFinetuning, Callback
from lightning.pytorch.strategies import DDPStrategy
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.optim import Optimizer

from crack.errors import UserError
from crack.folding import fold, unfold
from crack.report import save_figure, training_curves_figure

log = logging.getLogger(__name__)

# Frozen blocks are in eval mode on purpose (see StagedUnfreezing); Lightning warns about it.
warnings.filterwarnings("ignore", message=r"Found \d+ module\(s\) in eval mode")


@dataclass(frozen=True)
class Milestone:
    """At ``epoch``, unfreeze the last ``blocks`` modules of the backbone, at head LR x
    ``lr_factor``; the head's own LR is multiplied by ``head_lr_factor`` then."""

    epoch: int
    blocks: int
    lr_factor: float = 0.1
    head_lr_factor: float = 1.0


BATCHNORM_MODES = ("eval", "train")


def is_frozen(module: nn.Module) -> bool:
    return not any(p.requires_grad for p in module.parameters())


def trainable_parameter_count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


def rewrap_ddp(trainer: L.Trainer) -> None:
    """Wrap the model in a new DistributedDataParallel after parameters were unfrozen.

    DDP averages across processes the gradients of the parameters that were trainable when it
    wrapped the model, and no others: without this, each process would train the unfrozen blocks
    on its own data only, and the processes' models would drift apart (Lightning issue #20340).
    """
    strategy = trainer.strategy
    if isinstance(strategy, DDPStrategy) and isinstance(strategy.model, DistributedDataParallel):
        strategy.model = strategy.lightning_module
        strategy.configure_ddp()


class StagedUnfreezing(BaseFinetuning):
    """Freeze the whole backbone, then unfreeze its top blocks at the given epochs.

    Frozen blocks stay in inference mode: their BatchNorm layers normalise with their running
    statistics and never update them, so a frozen block computes in training exactly what it
    computes at evaluation. (Lightning's ``freeze`` alone would leave BatchNorm in train mode,
    normalising with batch statistics.)

    Unfrozen blocks train their weights; their BatchNorm layers, with ``batchnorm="eval"``,
    keep normalising with the running statistics learnt on ImageNet (their scale and shift
    train), as the original Keras recipe does; with ``"train"`` they switch to each batch's
    statistics and update the running ones, Lightning's default.

    With ``batchnorm="eval"`` and ``fold_batchnorm`` (the default), each unfrozen convolution
    and the inference-mode BatchNorm after it run as one convolution while training
    (`crack.folding`: the same function, 16% less time per step); the modules and checkpoints
    stay as they are.

    Args:
        milestones: ``{epoch, blocks, lr_factor, head_lr_factor}`` entries; empty keeps the
            backbone frozen.
        batchnorm: ``eval`` or ``train``, the mode of the unfrozen blocks' BatchNorm layers.
        fold_batchnorm: with ``batchnorm="eval"``, run each convolution and its BatchNorm as one.
        backbone: name of the LightningModule attribute holding the ``nn.Sequential`` backbone.
    """

    def __init__(
        self,
        milestones: Sequence[dict] = (),
        batchnorm: str = "eval",
        fold_batchnorm: bool = True,
        backbone: str = "features",
    ) -> None:
        super().__init__()
        if batchnorm not in BATCHNORM_MODES:
            raise UserError(
                f"callbacks.staged_unfreezing.batchnorm={batchnorm!r} is not one of "
                f"{list(BATCHNORM_MODES)}."
            )
        self.milestones = sorted((Milestone(**m) for m in milestones), key=lambda m: m.epoch)
        self.batchnorm = batchnorm
        self.fold_batchnorm = fold_batchnorm
        self.backbone = backbone

    def _blocks(self, pl_module: L.LightningModule) -> nn.Sequential:
        return getattr(pl_module, self.backbone)

    def freeze_before_training(self, pl_module: L.LightningModule) -> None:
        blocks = self._blocks(pl_module)
        for m in self.milestones:
            if not 0 < m.blocks <= len(blocks):
                raise UserError(
                    f"Milestone {m}: blocks must be in 1..{len(blocks)} (the backbone's blocks)."
                )
        self.freeze(blocks, train_bn=False)
        self._set_modes(blocks)

    def _set_modes(self, blocks: nn.Sequential) -> None:
        """Frozen blocks in eval mode; unfrozen ones in train mode, but for their BatchNorm
        layers with ``batchnorm="eval"``. (Lightning puts the whole model in train mode at
        every epoch start.)"""
        for block in blocks:
            if is_frozen(block):
                block.eval()
                unfold(block)
                continue
            block.train()
            if self.batchnorm == "eval":
                for module in block.modules():
                    if isinstance(module, nn.modules.batchnorm._BatchNorm):
                        module.eval()
                if self.fold_batchnorm:
                    fold(block)

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Validation, calibration, test and export after fit see the modules run one by one.
        unfold(self._blocks(pl_module))

    def on_exception(
        self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException
    ) -> None:
        unfold(self._blocks(pl_module))

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # On resume, BaseFinetuning puts back the optimizer's param groups as they were when the
        # checkpoint was written; the blocks in them must be trainable again too. (The epoch is
        # not restored yet at this point, so the groups, not the milestones, tell which.)
        super().on_fit_start(trainer, pl_module)
        optimized = {id(p) for o in trainer.optimizers for g in o.param_groups for p in g["params"]}
        unfrozen = [
            b for b in self._blocks(pl_module) if any(id(p) in optimized for p in b.parameters())
        ]
        for block in unfrozen:
            self.make_trainable(block)
        self._set_modes(self._blocks(pl_module))
        if unfrozen:
            rewrap_ddp(trainer)

    def finetune_function(
        self, pl_module: L.LightningModule, epoch: int, optimizer: Optimizer
    ) -> None:
        blocks = self._blocks(pl_module)
        for m in self.milestones:
            if m.epoch != epoch:
                continue
            head_lr = optimizer.param_groups[0]["lr"]
            lr = head_lr * m.lr_factor
            self.unfreeze_and_add_param_group(blocks[-m.blocks :], optimizer, lr=lr, train_bn=True)
            optimizer.param_groups[0]["lr"] = head_lr * m.head_lr_factor
            self._set_modes(blocks)
            log.info(  # epochs counted from 1, as in the progress bar and curves.png
                "Epoch %d: unfroze the last %d backbone blocks at lr %.2e (head lr %.2e, "
                "BatchNorm in %s mode)",
                epoch + 1, m.blocks, lr, head_lr * m.head_lr_factor, self.batchnorm,
            )  # fmt: skip

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_train_epoch_start(trainer, pl_module)  # calls finetune_function
        if any(m.epoch == trainer.current_epoch for m in self.milestones):
            rewrap_ddp(trainer)
        self._set_modes(self._blocks(pl_module))
        pl_module.log("trainable_params", float(trainable_parameter_count(pl_module)))


# Names under which CrackClassifier logs the epoch values -> their names in TrainingCurves.
EPOCH_METRICS = {
    "train/loss_epoch": "train/loss",
    "train/accuracy": "train/accuracy",
    "val/loss": "val/loss",
    "val/accuracy": "val/accuracy",
}


class TrainingCurves(Callback):
    """Record loss and accuracy per epoch and draw them, with the unfreeze milestones, to ``path``.

    The figure is redrawn after an epoch when ``min_interval_s`` seconds have passed since the
    last drawing (or since training started), and always when training ends or stops on an
    error or interrupt: it can be watched during training, epochs of a second or less (training
    on stored features) do not spend a third of their time drawing, and a run of a few seconds
    draws it once (a drawing takes about 0.2 s). Its history is part of the checkpoint, so a
    resumed run continues it.
    """

    def __init__(self, path: str | Path, min_interval_s: float = 10.0) -> None:
        self.path = Path(path)
        self.min_interval_s = min_interval_s
        self.history: list[dict] = []
        self._drawn_at = time.monotonic()  # of the last drawing, or of the training's start
        self._drawn_rows = 0

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._drawn_at = time.monotonic()

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Validation of this epoch has run by now, so callback_metrics holds its values too.
        logged = trainer.callback_metrics
        row = {"epoch": trainer.current_epoch}
        row |= {name: float(logged[key]) for key, name in EPOCH_METRICS.items() if key in logged}
        self.history.append(row)
        if time.monotonic() - self._drawn_at >= self.min_interval_s:
            self._draw(trainer)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._draw(trainer)

    def on_exception(
        self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException
    ) -> None:
        self._draw(trainer)

    def _draw(self, trainer: L.Trainer) -> None:
        if not trainer.is_global_zero or self._drawn_rows == len(self.history):
            return
        milestones = [
            m for c in trainer.callbacks if isinstance(c, StagedUnfreezing) for m in c.milestones
        ]
        save_figure(training_curves_figure(self.history, milestones), self.path)
        self._drawn_at, self._drawn_rows = time.monotonic(), len(self.history)

    def state_dict(self) -> dict:
        return {"history": self.history}

    def load_state_dict(self, state_dict: dict) -> None:
        self.history = list(state_dict["history"])
