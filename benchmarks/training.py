"""How fast training is, against the plain way and against one inference pass.

    python -m benchmarks.training --data-root DIR --weights-path FILE --epochs N --image-size PX --out FILE.json

In one process, on the same images, split and settings, each training run doing exactly N epochs
(early stopping off) and then testing its best checkpoint, it times:

- ``plain``: the plain pipeline, written here as the baseline: torchvision ``ImageFolder``, PIL
  decode and resize of every file in every epoch, a full float32 NCHW forward pass of the whole
  network for every image, the head trained on it (the same model, head, optimizer, batch size and
  checkpoint choice as ``experiment=frozen``);
- ``frozen`` and ``finetune``: ``train.py experiment=frozen|finetune``, run as train.py runs them,
  starting from an empty cache folder (so building the caches is included), then again
  (``frozen_reuse``, ``finetune_reuse``) with the caches of the first run;
- ``finetune_fp32``: ``experiment=finetune`` trained in float32 (``trainer.precision=32-true``;
  its default is bfloat16 autocast where the hardware has it), from an empty cache;
  ``finetune_bf16``: with the frozen blocks' pass in bfloat16 too (``inference.precision=bf16``);
  and ``finetune_unfolded``: with the unfrozen blocks' BatchNorm run as its own operator
  (``callbacks.staged_unfreezing.fold_batchnorm=false``), on the stores of ``finetune``: to
  compare with ``finetune_reuse``;
- ``floor``: one inference pass (decode + forward) over every image the experiments read (train,
  val and test), through the project's fastest exact runtime (`crack.runtime`: ONNX Runtime on a
  CPU), its export included; ``floor_torch``: the same through PyTorch float32 channels-last (the
  floor before ONNX Runtime); ``floor_bf16``: PyTorch bfloat16 autocast.

It prints wall time, images/s and test accuracy of each, and writes them to ``--out`` as JSON
(keys ``plain``, ``frozen``, ``frozen_reuse``, ``finetune``, ``finetune_reuse``,
``finetune_fp32``, ``finetune_bf16``, ``finetune_unfolded``, ``floor``, ``floor_torch``, ``floor_bf16``,
``speedup_frozen``, ``speedup_finetune``, ``speedup_finetune_fp32``, ``speedup_finetune_bf16``,
``frozen_over_floor``,
``floor_speedup_vs_torch`` = floor_torch seconds / floor seconds, ``settings``, ``machine``).
On a device without bfloat16 instructions ``finetune_bf16`` and ``floor_bf16`` (and their
speedup) are left out, and ``skipped`` says why (``--bf16-rows=yes`` runs them anyway).
images/s counts the images a run reads: epochs x (train + val) + test for training runs.
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import json
import logging
import os
import platform
import shutil
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import lightning as L
import torch
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from omegaconf import open_dict
from torch.utils.data import DataLoader, Subset
from torchvision.datasets import ImageFolder

from crack.allocator import keep_freed_memory
from crack.classes import has_split_folders
from crack.data import CrackDataModule, ImageFileDataset
from crack.model import CrackClassifier
from crack.runtime import ForwardRunner, bf16_native
from crack.splits import SPLITS, Sample
from crack.synthetic import make_dataset

log = logging.getLogger("benchmarks.training")

ROOT = Path(__file__).resolve().parents[1]  # where train.py and conf/ live
EXPERIMENTS = ("frozen", "finetune")
# The floor through the project's default runtime, through PyTorch float32 (channels-last, the
# floor before ONNX Runtime), and in bfloat16.
FLOORS = (("floor", "auto", "32"), ("floor_torch", "torch", "32"), ("floor_bf16", "torch", "bf16"))
FLOORS_SHOWN = tuple(name for name, _, _ in FLOORS)
BF16_ROWS = ("finetune_bf16", "floor_bf16")


def _floors(bf16: bool) -> tuple[tuple[str, str, str], ...]:
    """The floors to measure: all, or all but the bfloat16 one."""
    return FLOORS if bf16 else tuple(f for f in FLOORS if f[0] not in BF16_ROWS)


class TestMetrics(L.Callback):
    """Writes the test metrics to ``path`` as JSON: how the benchmark reads what train.py tested."""

    def __init__(self, path: str) -> None:
        self.path = Path(path)

    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if "test/" in k}
        self.path.write_text(json.dumps(metrics))


UNFOLDED = "callbacks.staged_unfreezing.fold_batchnorm=false"


def default_head_epochs(epochs: int) -> int:
    """The head-only epochs of a benchmarked finetune run: 3, as experiment=finetune, but at
    least one epoch left for the unfrozen blocks."""
    return min(3, epochs - 1)


def _runs(head_epochs: int, cache_dir: Path, bf16: bool = True) -> list[tuple[str, str, list[str]]]:
    """(name, experiment, overrides) of the train.py runs, in order: each experiment from an
    empty cache, then reusing it; then finetune trained in float32 (its own empty cache), with
    the frozen blocks' pass in bfloat16 too (its own stores; only if ``bf16``), and with
    BatchNorm not folded (reusing finetune's stores)."""
    finetune = [f"head_epochs={head_epochs}"]
    runs = []
    for experiment in EXPERIMENTS:
        extra = finetune if experiment == "finetune" else []
        runs += [(experiment, experiment, extra), (f"{experiment}_reuse", experiment, extra)]
    fp32 = ["trainer.precision=32-true", f"data.cache_dir={cache_dir}_fp32"]
    bf16_overrides = ["trainer.precision=bf16-mixed", "inference.precision=bf16"]
    return [
        *runs,
        ("finetune_fp32", "finetune", [*finetune, *fp32]),
        *([("finetune_bf16", "finetune", [*finetune, *bf16_overrides])] if bf16 else []),
        ("finetune_unfolded", "finetune", [*finetune, UNFOLDED]),
    ]


def train_overrides(
    datamodule: CrackDataModule, weights_path: str | Path, cache_dir: Path, epochs: int
) -> list[str]:
    """The train.py overrides of every benchmarked run: ``datamodule``'s data and settings,
    local weights, exactly ``epochs`` epochs (no early stopping), no progress bar."""
    return [
        f"data.root={datamodule.root}",
        f"model.weights_path={Path(weights_path).resolve()}",
        f"data.image_size={datamodule.preprocessing.image_size}",
        f"data.batch_size={datamodule.settings.batch_size}",
        f"data.num_workers={datamodule.settings.num_workers}",
        f"data.cache_dir={cache_dir}",
        f"trainer.max_epochs={epochs}",
        "callbacks.early_stopping=null",
        "+trainer.enable_progress_bar=false",
    ]


def _row(seconds: float, images: int, test_accuracy: float | None = None) -> dict:
    seconds = round(seconds, 3)
    row = {"seconds": seconds, "images_per_s": round(images / seconds, 2)}
    if test_accuracy is not None:
        row["test_accuracy"] = round(test_accuracy, 4)
    return row


def run_experiment(experiment: str, overrides: Sequence[str], run_dir: Path, images: int) -> dict:
    """Run ``train.py experiment=...`` in this process, as the command line runs it; time it."""
    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(
            "train",
            overrides=[
                f"experiment={experiment}",
                *overrides,
                f"hydra.runtime.output_dir={run_dir}",
            ],
            return_hydra_config=True,
        )
    metrics_file = run_dir / "test_metrics.json"
    with open_dict(cfg):
        cfg.callbacks.bench_test_metrics = {
            "_target_": "benchmarks.training.TestMetrics",
            "path": str(metrics_file),
        }
    HydraConfig.instance().set_config(cfg)
    run_dir.mkdir(parents=True, exist_ok=True)
    train = _load_train_script()
    start = time.perf_counter()
    train.main(cfg)  # Hydra hands a given config straight to the function
    seconds = time.perf_counter() - start
    accuracy = json.loads(metrics_file.read_text())["test/accuracy"]
    return _row(seconds, images, accuracy)


def _warm_up(workdir: Path, datamodule: CrackDataModule, weights_path: str | Path) -> None:
    """Pay the one-time costs before any clock runs, so that no run pays them for the others:
    imports (train.py, Hydra, TensorBoard, the ONNX exporter), the first read of every file from
    disk, the first forward passes (kernel selection, allocator) in both memory formats and
    through ONNX Runtime, and the first call of everything a train.py run calls (Lightning's
    loops, logging, metrics, checkpoints; 0.3-0.5 s that the first run timed paid alone), by a
    one-epoch run on 32 generated 32 px images."""
    tiny = make_dataset(workdir / "warm-up" / "data", n_per_class=16, image_size=32)
    overrides = [
        f"data.root={tiny}",
        f"model.weights_path={Path(weights_path).resolve()}",
        "data.image_size=32",
        f"data.cache_dir={workdir / 'warm-up' / 'cache'}",
        "trainer.max_epochs=1",
        "+trainer.enable_progress_bar=false",
    ]
    run_experiment("frozen", overrides, workdir / "warm-up" / "run", 1)
    for sample in datamodule.samples:
        (datamodule.root / sample.path).read_bytes()
    size = datamodule.preprocessing.image_size
    batch = torch.zeros(datamodule.settings.batch_size, 3, size, size)
    for channels_last in (False, True):
        with torch.inference_mode():
            CrackClassifier(weights=None, channels_last=channels_last).eval()(batch)
    ForwardRunner(CrackClassifier(weights=None).eval(), batch)(batch)


def _load_train_script():
    path = ROOT / "train.py"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: run the benchmark from a checkout of crack.")
    spec = importlib.util.spec_from_file_location("crack_train_script", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def plain_pipeline(
    datamodule: CrackDataModule,
    weights_path: str,
    epochs: int,
    lr: float,
    seed: int,
    device: torch.device,
) -> dict:
    """The baseline: ImageFolder, decode and resize every epoch, the whole network every batch.

    The same model (the backbone frozen in inference mode, as in ``experiment=frozen``), head,
    Adam learning rate, batch size, split and choice of the checkpoint with the lowest val loss.
    """
    L.seed_everything(seed)
    start = time.perf_counter()
    model = CrackClassifier(weights=None, weights_path=weights_path, channels_last=False)
    model.features.requires_grad_(False).eval()
    model.to(device)
    optimizer = torch.optim.Adam(model.head.parameters(), lr=lr)
    loss_fn = torch.nn.BCEWithLogitsLoss()
    loaders = {
        split: _image_folder_loader(datamodule, split, shuffle=split == "train") for split in SPLITS
    }

    def evaluate(split: str) -> tuple[float, float]:
        model.head.eval()
        total_loss, correct, count = 0.0, 0, 0
        with torch.no_grad():
            for images, labels in loaders[split]:
                images, labels = images.to(device), labels.to(device)
                logits = model(images)
                total_loss += float(loss_fn(logits, labels.float())) * len(labels)
                correct += int(((logits > 0).long() == labels).sum())
                count += len(labels)
        return total_loss / count, correct / count

    best_loss, best_head = float("inf"), None
    for _ in range(epochs):
        model.head.train()
        for images, labels in loaders["train"]:
            images, labels = images.to(device), labels.to(device)
            loss = loss_fn(model(images), labels.float())
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        val_loss, _ = evaluate("val")
        if val_loss < best_loss:
            best_loss, best_head = val_loss, copy.deepcopy(model.head.state_dict())
    model.head.load_state_dict(best_head)
    _, accuracy = evaluate("test")
    seconds = time.perf_counter() - start
    return _row(seconds, _images_read(datamodule, epochs), accuracy)


def _image_folder_loader(datamodule: CrackDataModule, split: str, shuffle: bool) -> DataLoader:
    """torchvision ImageFolder over the split's files, labelled as the datamodule labels them."""
    root = datamodule.root / split if has_split_folders(datamodule.root) else datamodule.root
    transform = datamodule.preprocessing.transform()
    folder = ImageFolder(str(root), transform=transform)
    # ImageFolder numbers classes alphabetically; the crack class must be label 1.
    labels = {folder.class_to_idx[name]: label for label, name in enumerate(datamodule.classes)}
    folder.target_transform = labels.__getitem__
    wanted = {s.path for s in datamodule.split_samples(split)}
    prefix = f"{split}/" if root != datamodule.root else ""
    indices = [
        i
        for i, (path, _) in enumerate(folder.samples)
        if prefix + Path(path).relative_to(root).as_posix() in wanted
    ]
    batch_size = datamodule.settings.batch_size
    return DataLoader(
        Subset(folder, indices),
        batch_size=batch_size,
        shuffle=shuffle,
        drop_last=shuffle and len(indices) > batch_size,
        num_workers=datamodule.settings.num_workers,
    )


def inference_floor(
    datamodule: CrackDataModule,
    samples: Sequence[Sample],
    weights_path: str,
    device: torch.device,
    runtime: str = "auto",
    precision: str = "32",
) -> dict:
    """One pass over ``samples``: decode, resize, forward, through ``runtime`` (`crack.runtime`;
    on CUDA PyTorch with bf16 autocast, as training runs there). Exporting the network to ONNX
    Runtime is part of the time: every run that uses it pays it."""
    start = time.perf_counter()
    model = CrackClassifier(weights=None, weights_path=weights_path).eval().to(device)
    images = ImageFileDataset(datamodule.root, samples, datamodule.preprocessing.transform())
    loader = DataLoader(
        images,
        batch_size=datamodule.settings.batch_size,
        num_workers=datamodule.settings.num_workers,
        pin_memory=device.type == "cuda",
    )
    if device.type == "cuda":
        precision = "bf16"
    size = datamodule.preprocessing.image_size
    runner = ForwardRunner(model, torch.zeros(2, 3, size, size), runtime, precision, device)
    for batch, _ in loader:
        runner(batch)
    if device.type == "cuda":
        torch.cuda.synchronize()
    row = _row(time.perf_counter() - start, len(samples))
    return {**row, "runtime": runner.name}


def _images_read(datamodule: CrackDataModule, epochs: int) -> int:
    count = {split: len(datamodule.split_samples(split)) for split in SPLITS}
    return epochs * (count["train"] + count["val"]) + count["test"]


def machine() -> dict:
    """What the figures were measured on."""
    cpu = platform.processor()
    try:
        names = [
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ]
        cpu = names[0] if names else cpu
    except OSError:
        pass
    return {
        "cpu": cpu,
        "usable_cpus": len(os.sched_getaffinity(0))
        if hasattr(os, "sched_getaffinity")
        else os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        # What the CPU runs fastest: ONNX Runtime and PyTorch pick their kernels by it.
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "cpu_bf16": bf16_native(torch.device("cpu")),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "load_average_1min_at_start": round(os.getloadavg()[0], 2),
    }


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.training", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--data-root", required=True, help="folder of class folders of images")
    parser.add_argument("--weights-path", required=True, help="MobileNetV2 state_dict file")
    parser.add_argument("--epochs", type=int, default=15, help="epochs of every training run")
    parser.add_argument("--image-size", type=int, default=224, help="input size in pixels")
    parser.add_argument("--out", required=True, help="JSON file to write the figures to")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--num-workers", type=int, default=None, help="default: data config's")
    parser.add_argument(
        "--head-epochs",
        type=int,
        default=None,
        help="finetune: epochs before unfreezing; default min(3, epochs - 1), so it unfreezes",
    )
    parser.add_argument(
        "--cache-dir", default=None, help="cache folder; default: a new temporary one, removed"
    )
    parser.add_argument(
        "--bf16-rows",
        choices=("auto", "yes", "no"),
        default="auto",
        help="run finetune_bf16 and floor_bf16; auto: where the device has bfloat16 "
        "instructions (elsewhere autocast emulates them: a finetune run takes many minutes)",
    )
    args = parser.parse_args(argv)
    if args.epochs < 1:
        parser.error(f"--epochs={args.epochs}: give at least 1")
    return args


def main(argv: Sequence[str] | None = None) -> dict:
    """Run the benchmark, print the table, write the JSON; returns the figures."""
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s][%(name)s] %(message)s")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="crack-bench-"))
    cache_dir = Path(args.cache_dir) if args.cache_dir else workdir / "cache"
    head_epochs = (
        args.head_epochs if args.head_epochs is not None else default_head_epochs(args.epochs)
    )
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    results: dict = {"machine": machine()}
    # As train.py does by default; for every run here, the plain one included.
    malloc_tuned = keep_freed_memory()

    datamodule = CrackDataModule(
        args.data_root, image_size=args.image_size, batch_size=args.batch_size, cache=False,
        **({} if args.num_workers is None else {"num_workers": args.num_workers}),
    )  # fmt: skip
    datamodule.setup()
    counts = {split: len(datamodule.split_samples(split)) for split in SPLITS}
    images_read = _images_read(datamodule, args.epochs)
    results["settings"] = {
        "data_root": str(datamodule.root),
        "images": counts,
        "epochs": args.epochs,
        "finetune_head_epochs": head_epochs,
        "image_size": args.image_size,
        "batch_size": args.batch_size,
        "num_workers": datamodule.settings.num_workers,
        "device": str(device),
        "keep_freed_memory": malloc_tuned,
    }
    overrides = train_overrides(datamodule, args.weights_path, cache_dir, args.epochs)
    bf16 = args.bf16_rows == "yes" or (args.bf16_rows == "auto" and bf16_native(device))
    if not bf16:
        results["skipped"] = {
            name: f"no bfloat16 instructions on this {device.type} (--bf16-rows=yes runs it)"
            for name in BF16_ROWS
        }
    try:
        _warm_up(workdir, datamodule, args.weights_path)
        for name, runtime, precision in _floors(bf16):
            log.info("%s: one inference pass over %d images", name, len(datamodule.samples))
            results[name] = inference_floor(
                datamodule, datamodule.samples, args.weights_path, device, runtime, precision
            )
        log.info("plain pipeline: %d epochs", args.epochs)
        results["plain"] = plain_pipeline(
            datamodule, args.weights_path, args.epochs, lr=1e-3, seed=42, device=device
        )
        for name, experiment, extra in _runs(head_epochs, cache_dir, bf16):
            log.info("%s: train.py experiment=%s %s", name, experiment, " ".join(extra))
            results[name] = run_experiment(
                experiment, [*overrides, *extra], workdir / "runs" / name, images_read
            )
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    plain = results["plain"]["seconds"]
    results["speedup_frozen"] = round(plain / results["frozen"]["seconds"], 2)
    results["speedup_finetune"] = round(plain / results["finetune"]["seconds"], 2)
    for name in ("finetune_fp32", "finetune_bf16"):
        if name in results:  # finetune_bf16: not where skipped
            results[f"speedup_{name}"] = round(plain / results[name]["seconds"], 2)
    results["frozen_over_floor"] = round(
        results["frozen"]["seconds"] / results["floor"]["seconds"], 2
    )
    results["floor_speedup_vs_torch"] = round(
        results["floor_torch"]["seconds"] / results["floor"]["seconds"], 2
    )
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(format_results(results))
    print(f"Wrote {out}")
    return results


def format_results(results: dict) -> str:
    """The figures as a text table."""
    s = results["settings"]
    lines = [
        f"{s['epochs']} epochs, {s['image_size']} px, images {s['images']}, "
        f"batch {s['batch_size']}, {s['num_workers']} workers, {s['device']}",
        f"{'run':<16}{'seconds':>10}{'images/s':>10}{'test acc':>10}{'vs plain':>10}",
    ]
    for name in ("plain", *(name for name, _, _ in _runs(0, Path())), *FLOORS_SHOWN):
        if name not in results:  # skipped
            continue
        row = results[name]
        accuracy = f"{row['test_accuracy']:.4f}" if "test_accuracy" in row else "-"
        speedup = results["plain"]["seconds"] / row["seconds"]
        lines.append(
            f"{name:<16}{row['seconds']:>10.1f}{row['images_per_s']:>10.1f}"
            f"{accuracy:>10}{speedup:>9.1f}x"
        )
    lines.append(
        f"frozen / floor: {results['frozen_over_floor']:.2f}; floor through "
        f"{results['floor']['runtime']}: {results['floor_speedup_vs_torch']:.2f}x the PyTorch "
        "float32 floor"
    )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
