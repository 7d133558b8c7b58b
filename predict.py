"""Predict cracks in photos: python predict.py ckpt=PATH input=PHOTO_OR_FOLDER [backend=onnx model=F]."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import hydra
import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from crack.allocator import keep_freed_memory
from crack.errors import UserError, user_errors
from crack.field_report import write_prediction_report
from crack.files import IMAGE_EXTENSIONS, list_images
from crack.inference import (
    OnnxClassifier,
    Tiling,
    TorchClassifier,
    predict_files,
    summary,
    write_predictions,
)

log = logging.getLogger("predict")


def build_classifier(cfg: DictConfig) -> TorchClassifier | OnnxClassifier:
    if cfg.backend == "torch":
        if not cfg.ckpt:
            raise UserError(
                "ckpt is required: python predict.py ckpt=logs/train/<run>/checkpoints/best.ckpt "
                "input=PHOTO_OR_FOLDER (or backend=onnx model=FILE.onnx)"
            )
        inference = cfg.inference
        return TorchClassifier(cfg.ckpt, inference.runtime, inference.precision, cfg.threads)
    if cfg.backend == "onnx":
        if not cfg.model:
            raise UserError(
                "backend=onnx needs model=FILE.onnx (written by python export.py ckpt=... "
                "format=onnx)"
            )
        return OnnxClassifier(cfg.model, cfg.threads)
    raise UserError(f"backend={cfg.backend!r} is not one of: torch, onnx")


def check_workers(workers: int) -> int:
    if not isinstance(workers, int) or workers < 0:
        raise UserError(f"workers={workers!r} must be a whole number >= 0 (0: decode in-process).")
    return workers


# Its own config folder: in conf/, `model=FILE.onnx` would select the `model` config group.
@hydra.main(version_base="1.3", config_path="conf/predict", config_name="predict")
def main(cfg: DictConfig) -> None:
    """Predict every image, write predictions.csv (and heatmaps of large photos), print a summary."""
    with user_errors():  # bad input: one line, exit status 2
        predict(cfg)


def predict(cfg: DictConfig) -> None:
    """The work of `main`."""
    if cfg.keep_freed_memory:
        keep_freed_memory()
    if not cfg.input:
        raise UserError("input is required: python predict.py ckpt=PATH input=PHOTO_OR_FOLDER")
    source = Path(cfg.input).expanduser()
    if source.is_dir():
        paths, root = list_images(source), source
        if not paths:
            raise UserError(f"input={str(source)!r} holds no images {sorted(IMAGE_EXTENSIONS)}.")
    elif source.is_file():
        paths, root = [source], source.parent
    else:
        raise UserError(f"input={str(source)!r} is neither an image file nor a folder.")
    workers = check_workers(cfg.workers)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    classifier = build_classifier(cfg)
    log.info("Network run by %s", classifier.runtime_name)
    threshold = classifier.threshold if cfg.threshold is None else cfg.threshold
    run_dir = Path(HydraConfig.get().runtime.output_dir)

    start = time.perf_counter()
    csv_path = run_dir / "predictions.csv"
    # Each row is written as soon as it is known: a failure on one photo (a full disk while
    # writing its heatmap) keeps the rows of all photos before it.
    results = write_predictions(
        csv_path,
        predict_files(
            classifier,
            paths,
            threshold,
            cfg.batch_size,
            Tiling(**cfg.tiling),
            run_dir / "heatmaps" if cfg.heatmaps else None,
            root,
            workers,
        ),
        threshold,
        classifier.classes,
    )
    seconds = time.perf_counter() - start
    about = {
        "input": str(source),
        "model": str(cfg.ckpt or cfg.model),
        "threshold": f"{threshold:g}",
    }
    report = write_prediction_report(
        run_dir / "report.html", results, threshold, classifier.classes, root, about
    )
    print(summary(results, threshold, seconds))
    threads = torch.get_num_threads() if cfg.backend == "torch" else cfg.threads or "default"
    print(
        f"Backend {cfg.backend}, network run by {classifier.runtime_name}, batch size "
        f"{cfg.batch_size}, threads: {threads}, decode workers: {workers}."
    )
    print(f"Wrote {csv_path}, {report}")
    if all(r.error for r in results):
        raise UserError(
            f"None of the {len(results)} files under input={str(source)!r} could be read."
        )


if __name__ == "__main__":
    main()
