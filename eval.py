"""Evaluate a trained checkpoint: python eval.py ckpt=PATH [data.root=OTHER_FOLDER]."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import hydra
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig
from torch.utils.data import DataLoader

from crack.allocator import keep_freed_memory
from crack.checkpoint import load_trained_model
from crack.classes import find_classes
from crack.data import ImageFileDataset
from crack.field_report import write_evaluation_html
from crack.index import index_images
from crack.metrics import evaluation_metrics, format_metrics
from crack.report import write_evaluation_report

log = logging.getLogger("eval")


@hydra.main(version_base="1.3", config_path="conf", config_name="eval")
def main(cfg: DictConfig) -> dict:
    """Evaluate, print a metrics table, write metrics.json and the report into the run directory."""
    if cfg.keep_freed_memory:
        keep_freed_memory()
    if not cfg.ckpt:
        raise SystemExit(
            "ckpt is required: python eval.py ckpt=logs/train/<run>/checkpoints/best.ckpt"
        )
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    trained = load_trained_model(cfg.ckpt)

    if cfg.data.root:
        root = Path(cfg.data.root).expanduser().resolve()
        classes = find_classes(root, cfg.data.positive_class, cfg.data.classes)
        samples, _ = index_images(root, classes)  # every readable image, whatever its split
        log.info(
            "Evaluating all %d images under %s (crack class %r)", len(samples), root, classes[1]
        )
    else:
        root = trained.root
        samples = [s for s in trained.samples if s.split == "test"]
        log.info("Evaluating the test split of %s: %d images", root, len(samples))

    dataset = ImageFileDataset(root, samples, trained.preprocessing.transform())
    loader = DataLoader(dataset, batch_size=cfg.data.batch_size, num_workers=cfg.data.num_workers)
    trainer = instantiate(cfg.trainer, default_root_dir=run_dir)
    probs = torch.cat(trainer.predict(trained.model, loader))
    labels = torch.tensor([s.label for s in samples])

    metrics = evaluation_metrics(probs, labels, cfg.threshold)
    (run_dir / "metrics.json").write_text(json.dumps(metrics, indent=2))
    paths = [root / s.path for s in samples]
    report = write_evaluation_report(
        run_dir, paths, labels, probs, metrics, trained.classes, cfg.threshold, cfg.max_errors
    )
    about = {"checkpoint": str(cfg.ckpt), "data": str(root)}
    report.append(
        write_evaluation_html(
            run_dir,
            paths,
            labels,
            probs,
            metrics,
            trained.classes,
            cfg.threshold,
            cfg.max_errors,
            root,
            about,
        )
    )
    print(format_metrics(metrics))
    print(f"Wrote {run_dir / 'metrics.json'}, {', '.join(p.name for p in report)}")
    print(f"TensorBoard: tensorboard --logdir {run_dir}")
    return metrics


if __name__ == "__main__":
    main()
