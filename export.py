"""Export a trained checkpoint: python export.py ckpt=PATH format=onnx|torchscript."""

from __future__ import annotations

from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from crack.checkpoint import load_trained_model
from crack.export import (
    FORMATS,
    ProbabilityModel,
    export_onnx,
    export_torchscript,
    max_abs_difference,
    parity_images,
)


@hydra.main(version_base="1.3", config_path="conf", config_name="export")
def main(cfg: DictConfig) -> float:
    """Export, check parity with PyTorch, and return the largest probability difference."""
    if not cfg.ckpt:
        raise SystemExit(
            "ckpt is required: python export.py ckpt=logs/train/<run>/checkpoints/best.ckpt"
        )
    if cfg.format not in FORMATS:
        raise SystemExit(f"format={cfg.format!r} is not one of: {', '.join(FORMATS)}")
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    trained = load_trained_model(cfg.ckpt)
    model = ProbabilityModel.of(trained.model)
    # The operating point chosen on the training run's validation split, unless given.
    threshold = float(trained.model.threshold) if cfg.threshold is None else cfg.threshold
    suffix = ".onnx" if cfg.format == "onnx" else ".pt"
    output = Path(cfg.output).expanduser() if cfg.output else run_dir / f"model{suffix}"
    settings = (trained.preprocessing, trained.classes, threshold)
    if cfg.format == "onnx":
        export_onnx(model, output, *settings, opset=cfg.opset)
    else:
        export_torchscript(model, output, *settings)
    print(f"Wrote {output}")

    images, what = parity_images(
        trained.root, trained.samples, trained.preprocessing, cfg.parity.images
    )
    difference = max_abs_difference(model, output, images, cfg.format)
    runtime = "onnxruntime" if cfg.format == "onnx" else "TorchScript"
    print(
        f"Parity on {len(images)} {what}: max |p_pytorch - p_{runtime}| = {difference:.2e} "
        f"(tolerance {cfg.parity.tolerance:g})"
    )
    if not difference <= cfg.parity.tolerance:  # also fails on NaN
        raise SystemExit(
            f"Parity check failed: the exported {output} differs from the checkpoint by "
            f"{difference:.2e} > parity.tolerance={cfg.parity.tolerance:g}."
        )
    print("Parity check passed.")
    return difference


if __name__ == "__main__":
    main()
