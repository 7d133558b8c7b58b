"""Evaluate a trained checkpoint: python eval.py ckpt=PATH [data.root=OTHER_FOLDER]."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import hydra
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from crack.allocator import keep_freed_memory
from crack.atomic import atomic_write
from crack.checkpoint import TrainedModel, load_trained_model
from crack.data import CrackDataModule
from crack.errors import UserError, user_errors
from crack.export import ProbabilityModel
from crack.familiarity import unfamiliar_summary
from crack.field_report import write_evaluation_html
from crack.metrics import evaluation_metrics, format_metrics
from crack.report import write_evaluation_report
from crack.runtime import ForwardRunner, check_options, planned_runtime

log = logging.getLogger("eval")


@hydra.main(version_base="1.3", config_path="conf", config_name="eval")
def main(cfg: DictConfig) -> dict:
    """Evaluate, print a metrics table, write metrics.json and the report into the run directory."""
    with user_errors():  # bad input: one line, exit status 2
        return evaluate(cfg)


def evaluate(cfg: DictConfig) -> dict:
    """The work of `main`."""
    if cfg.keep_freed_memory:
        keep_freed_memory()
    if not cfg.ckpt:
        raise UserError(
            "ckpt is required: python eval.py ckpt=logs/train/<run>/checkpoints/best.ckpt"
        )
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    trained = load_trained_model(cfg.ckpt)

    # The checkpoint's own test split, or every readable image under data.root.
    settings = OmegaConf.to_container(cfg.data, resolve=True)
    datamodule = CrackDataModule.for_evaluation(trained.data_state, **settings)
    samples, root = datamodule.split_samples("test"), datamodule.root
    what = f"all {len(samples)} images under" if cfg.data.root else "the test split of"
    log.info("Evaluating %s %s (crack class %r)", what, root, datamodule.classes[1])

    outputs = predict_batches(cfg, trained, datamodule, run_dir)
    probs = torch.cat([batch for batch, _ in outputs])
    familiarity = torch.cat([batch for _, batch in outputs])
    labels = torch.tensor([s.label for s in samples])
    # The operating point chosen on the training run's validation split, unless given.
    threshold = float(trained.model.threshold) if cfg.threshold is None else cfg.threshold
    unfamiliar = trained.model.familiarity.unfamiliar(familiarity)

    metrics = evaluation_metrics(probs, labels, threshold, unfamiliar)
    with atomic_write(run_dir / "metrics.json") as f:
        f.write(json.dumps(metrics, indent=2))
    paths = [root / s.path for s in samples]
    report = write_evaluation_report(
        run_dir, paths, labels, probs, metrics, trained.classes, threshold, familiarity,
        unfamiliar, cfg.max_errors,
    )  # fmt: skip
    about = {"checkpoint": str(cfg.ckpt), "data": str(root)}
    report.append(
        write_evaluation_html(
            run_dir, paths, labels, probs, metrics, trained.classes, threshold, cfg.max_errors,
            root, about,
        )
    )  # fmt: skip
    print(format_metrics(metrics))
    print(unfamiliar_summary(int(unfamiliar.sum()), len(samples)))
    print(f"Wrote {run_dir / 'metrics.json'}, {', '.join(p.name for p in report)}")
    print(f"TensorBoard: tensorboard --logdir {run_dir}")
    return metrics


def predict_batches(
    cfg: DictConfig, trained: TrainedModel, datamodule: CrackDataModule, run_dir: Path
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(probabilities, familiarity) of each batch of the test split, in order.

    On a CPU, ONNX Runtime (or bfloat16 autocast, ``inference.precision=bf16``) runs the network
    over the datamodule's batches: the same results as Lightning's float32 PyTorch pass within
    1e-4, faster (README, Evaluation report). Elsewhere, and with ``inference.runtime=torch``,
    it is ``trainer.predict``.
    """
    runtime, precision = check_options(cfg.inference.runtime, cfg.inference.precision)
    accelerator = cfg.trainer.accelerator
    cpu = accelerator == "cpu" or (accelerator == "auto" and not torch.cuda.is_available())
    # Refuses runtime=onnxruntime on a GPU, in one line.
    planned = planned_runtime(runtime, precision, "cpu" if cpu else "cuda")
    if cpu and (planned == "onnxruntime" or precision == "bf16"):
        size = trained.preprocessing.image_size
        runner = ForwardRunner(
            ProbabilityModel.of(trained.model), torch.zeros(2, 3, size, size), runtime, precision
        )
        log.info("Network run by %s", runner.name)
        datamodule.setup("predict")
        return [runner(images) for images, _ in datamodule.predict_dataloader()]
    log.info("Network run by Lightning's trainer.predict (PyTorch)")
    settings = {"precision": "bf16-mixed"} if precision == "bf16" else {}
    trainer = instantiate(cfg.trainer, default_root_dir=run_dir, **settings)
    return trainer.predict(trained.model, datamodule=datamodule)


if __name__ == "__main__":
    main()
