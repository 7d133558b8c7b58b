"""The entry points end to end, as a user runs them (subprocesses, tiny synthetic data)."""

from __future__ import annotations

import csv
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.models import mobilenet_v2

from crack.synthetic import draw_crack, make_image, make_texture

ROOT = Path(__file__).resolve().parents[1]
METRICS_KEYS = {
    "accuracy", "balanced_accuracy", "precision", "recall", "f1", "auroc", "average_precision",
    "ece", "threshold", "unfamiliar_fraction", "num_images", "confusion_matrix",
}  # fmt: skip


def run(
    script: str, *overrides: str, check: bool = True, python_options: tuple[str, ...] = ()
) -> subprocess.CompletedProcess:
    result = subprocess.run(
        [sys.executable, *python_options, script, *overrides],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={
            "PATH": "/usr/bin:/bin",
            "OMP_NUM_THREADS": "2",
            "TORCH_HOME": "/nonexistent",
            "CRACK_CACHE_DIR": os.environ["CRACK_CACHE_DIR"],  # set by conftest
        },
    )
    if check:
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def printed_test_metrics(stdout: str) -> dict[str, float]:
    block = stdout.split("Test metrics of the best checkpoint:")[1]
    return {k: float(v) for k, v in re.findall(r"^\s+test/(\w+)\s+([\d.]+)$", block, re.M)}


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory) -> Path:
    """A short demo training run on a freshly generated tiny synthetic dataset."""
    tmp = tmp_path_factory.mktemp("demo")
    result = run(
        "train.py", "experiment=demo", f"data.root={tmp / 'data'}",
        "data.synthetic.n_per_class=30", "data.synthetic.image_size=32", "data.image_size=32",
        "data.batch_size=16", "trainer.max_epochs=2", f"hydra.run.dir={tmp / 'run'}",
    )  # fmt: skip
    (tmp / "stdout.txt").write_text(result.stdout)
    return tmp


def test_train_writes_checkpoints_manifest_and_logs(demo_run):
    run_dir = demo_run / "run"
    assert (run_dir / "checkpoints" / "best.ckpt").is_file()
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()
    assert list(run_dir.glob("events.out.tfevents.*"))
    assert Image.open(run_dir / "curves.png").format == "PNG"
    manifest = (run_dir / "manifest.csv").read_text().splitlines()
    assert manifest[0] == "path,label,split,sha256,group" and len(manifest) == 61
    assert json.loads((run_dir / "manifest.json").read_text())["files_found"] == 60
    stdout = (demo_run / "stdout.txt").read_text()
    assert "best.ckpt" in stdout and "tensorboard --logdir" in stdout
    assert set(printed_test_metrics(stdout)) >= {"accuracy", "precision", "recall", "f1", "auroc"}
    assert f"Run directory: {run_dir}" in stdout and "Kept checkpoint: epoch " in stdout
    assert "Training ran 2 epochs" in stdout and "Epoch 2/2" in stdout  # counted from 1
    assert "Tip" not in stdout and "FLOPs" not in stdout  # Lightning's noise is silenced
    log = (run_dir / "train.log").read_text()
    assert printed_test_metrics(log) == printed_test_metrics(stdout)  # the log has them too


def test_eval_reproduces_the_test_metrics(demo_run):
    ckpt = demo_run / "run" / "checkpoints" / "best.ckpt"
    run("eval.py", f"ckpt={ckpt}", f"hydra.run.dir={demo_run / 'eval'}", "data.num_workers=0")
    metrics = json.loads((demo_run / "eval" / "metrics.json").read_text())
    assert set(metrics) == METRICS_KEYS
    test_rows = [
        r
        for r in (demo_run / "run" / "manifest.csv").read_text().splitlines()
        if r.split(",")[2] == "test"
    ]
    assert metrics["num_images"] == len(test_rows) == 6
    assert sum(map(sum, metrics["confusion_matrix"])) == 6
    for figure in ("confusion_matrix.png", "roc_pr.png", "errors.png"):
        assert Image.open(demo_run / "eval" / figure).format == "PNG"
    report = (demo_run / "eval" / "report.html").read_text()
    assert "Evaluation report" in report and "<th>num_images</th><td>6</td>" in report
    rows = list(csv.DictReader((demo_run / "eval" / "predictions.csv").open()))
    assert len(rows) == 6
    assert set(rows[0]) == {
        "path",
        "label",
        "probability",
        "predicted",
        "familiarity",
        "unfamiliar",
    }
    # The operating point chosen on validation and stored in the checkpoint, not 0.5.
    stored = torch.load(ckpt, weights_only=True)
    assert metrics["threshold"] == pytest.approx(float(stored["state_dict"]["threshold"]))
    assert metrics["threshold"] == pytest.approx(stored["calibration"]["threshold"])
    assert metrics["threshold"] != 0.5
    assert all(Path(r["path"]).is_file() for r in rows)
    assert list((demo_run / "eval").glob("events.out.tfevents.*"))
    printed = printed_test_metrics((demo_run / "stdout.txt").read_text())
    for name in ("accuracy", "precision", "recall", "f1", "auroc"):
        assert metrics[name] == pytest.approx(printed[name], abs=1e-4), name


def test_eval_on_another_folder_uses_every_image(demo_run, tmp_path):
    from crack.synthetic import make_dataset

    other = make_dataset(
        tmp_path / "other",
        n_per_class=7,
        image_size=40,
        seed=5,
        positive="cracked",
        negative="not_cracked",
    )
    ckpt = demo_run / "run" / "checkpoints" / "best.ckpt"
    run(
        "eval.py",
        f"ckpt={ckpt}",
        f"data.root={other}",
        f"hydra.run.dir={tmp_path / 'eval'}",
        "data.num_workers=0",
    )
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert metrics["num_images"] == 14
    (tn, fp), (fn, tp) = metrics["confusion_matrix"]
    assert tp + fn == 7 and tn + fp == 7  # the "cracked" folder is the positive class


def eval_outputs(folder: Path) -> tuple[dict, list[dict]]:
    metrics = json.loads((folder / "metrics.json").read_text())
    return metrics, list(csv.DictReader((folder / "predictions.csv").open()))


def test_eval_through_onnx_runtime_equals_pytorch_and_bf16_runs(demo_run, tmp_path):
    ckpt = demo_run / "run" / "checkpoints" / "best.ckpt"
    settings = {
        "default": [],
        "torch": ["inference.runtime=torch"],
        "bf16": ["inference.runtime=torch", "inference.precision=bf16"],
    }
    outputs, logs = {}, {}
    for name, overrides in settings.items():
        folder = tmp_path / name
        run("eval.py", f"ckpt={ckpt}", f"hydra.run.dir={folder}", "data.num_workers=0", *overrides)
        outputs[name], logs[name] = eval_outputs(folder), (folder / "eval.log").read_text()
    assert "Network run by ONNX Runtime float32 (CPU)" in logs["default"]
    assert "Network run by Lightning's trainer.predict" in logs["torch"]
    assert "Network run by PyTorch bfloat16 autocast" in logs["bf16"]
    (fast, fast_rows), (exact, exact_rows) = outputs["default"], outputs["torch"]
    assert set(fast) == set(exact) == METRICS_KEYS
    for key, value in exact.items():
        assert fast[key] == (value if isinstance(value, list) else pytest.approx(value, abs=1e-4))
    assert [r["path"] for r in fast_rows] == [r["path"] for r in exact_rows]
    for a, b in zip(fast_rows, exact_rows, strict=True):
        assert float(a["probability"]) == pytest.approx(float(b["probability"]), abs=1e-4)
        assert (a["label"], a["predicted"], a["unfamiliar"]) == (
            b["label"], b["predicted"], b["unfamiliar"],
        )  # fmt: skip
    reduced, _ = outputs["bf16"]
    assert reduced["num_images"] == exact["num_images"]
    assert reduced["auroc"] == pytest.approx(exact["auroc"], abs=0.1)


def test_predict_defaults_to_onnx_runtime_with_the_pytorch_results(demo_run, tmp_path):
    ckpt = demo_run / "run" / "checkpoints" / "best.ckpt"
    photos = tmp_path / "photos"
    photos.mkdir()
    rng = np.random.default_rng(4)
    for i in range(6):
        make_image(rng, 32, crack=i % 2 == 0).save(photos / f"p{i}.png")
    (photos / "p3_broken.jpg").write_bytes(b"not an image")
    rows = {}
    for name, overrides in {
        "default": [],
        "torch": ["inference.runtime=torch", "workers=0"],
    }.items():
        result = run("predict.py", f"ckpt={ckpt}", f"input={photos}", "batch_size=4",
                     f"hydra.run.dir={tmp_path / name}", *overrides)  # fmt: skip
        assert "7 files: 6 read, 1 unreadable." in result.stdout
        rows[name] = list(csv.DictReader((tmp_path / name / "predictions.csv").open()))
        runtime = "ONNX Runtime float32 (CPU)" if name == "default" else "PyTorch float32 (cpu)"
        assert f"network run by {runtime}" in result.stdout
        assert f"Network run by {runtime}" in (tmp_path / name / "predict.log").read_text()
    assert [r["path"] for r in rows["default"]] == [r["path"] for r in rows["torch"]]
    for a, b in zip(rows["default"], rows["torch"], strict=True):
        assert a["error"] == b["error"] and a["label"] == b["label"]
        if not a["error"]:
            assert float(a["probability"]) == pytest.approx(float(b["probability"]), abs=1e-4)

    for override, words in [
        ("inference.runtime=tensorrt", "not one of"),  # the other values: tests/test_runtime.py
        ("workers=-1", "workers=-1"),
    ]:
        result = run("predict.py", f"ckpt={ckpt}", f"input={photos}", override,
                     f"hydra.run.dir={tmp_path / 'refused'}", check=False)  # fmt: skip
        errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
        assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
        assert len(errors) == 1 and words in errors[0] and override.split("=")[0] in errors[0]


def test_eval_requires_a_readable_checkpoint(tmp_path):
    missing = run("eval.py", f"hydra.run.dir={tmp_path}", check=False)
    assert missing.returncode == 2 and "error: ckpt is required" in missing.stderr
    (tmp_path / "broken.ckpt").write_bytes(b"not a checkpoint")
    broken = run(
        "eval.py", f"ckpt={tmp_path / 'broken.ckpt'}", f"hydra.run.dir={tmp_path}", check=False
    )
    assert broken.returncode == 2 and "is not a PyTorch file but a text file" in broken.stderr


def test_finetune_with_local_weights_unfreezes_and_trains(tiny_dataset, tmp_path):
    torch.save(mobilenet_v2(weights=None).features.state_dict(), tmp_path / "features.pth")
    features_only = {f"features.{k}": v for k, v in torch.load(tmp_path / "features.pth").items()}
    torch.save(features_only, tmp_path / "features.pth")
    run(
        "train.py", "experiment=finetune", f"data.root={tiny_dataset}", "data.image_size=32",
        "data.num_workers=0", "data.batch_size=16", f"model.weights_path={tmp_path / 'features.pth'}",
        "head_epochs=1", "trainer.max_epochs=2", f"hydra.run.dir={tmp_path / 'run'}",
    )  # fmt: skip
    ckpt = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=True)
    groups = ckpt["optimizer_states"][0]["param_groups"]
    assert len(groups) == 2 and groups[1]["lr"] == pytest.approx(groups[0]["lr"] * 0.1)


def test_train_without_data_root_explains(tmp_path):
    result = run("train.py", "experiment=frozen", f"hydra.run.dir={tmp_path}", check=False)
    assert result.returncode != 0 and "data.root is not set" in result.stderr


def test_train_offline_weights_error_names_the_fix(tiny_dataset, tmp_path):
    result = run("train.py", f"data.root={tiny_dataset}", f"hydra.run.dir={tmp_path}", check=False)
    assert result.returncode != 0
    assert "model.weights_path" in result.stderr and "mobilenet_v2-b0353104.pth" in result.stderr


def test_export_onnx_then_predict_a_folder_through_onnx_runtime(demo_run, tmp_path):
    ckpt = demo_run / "run" / "checkpoints" / "best.ckpt"
    exported = run(
        "export.py", f"ckpt={ckpt}", "format=onnx", f"hydra.run.dir={tmp_path / 'export'}"
    )
    assert "Parity on 6 test-split images" in exported.stdout
    assert "Parity check passed." in exported.stdout
    model = tmp_path / "export" / "model.onnx"

    photos = tmp_path / "photos"
    (photos / "site").mkdir(parents=True)
    rng = np.random.default_rng(0)
    make_image(rng, 32, crack=True).save(photos / "a.jpg")
    make_image(rng, 40, crack=False).convert("L").save(photos / "site" / "b.png")
    large = draw_crack(make_texture(rng, 96, 64, scale=0.5), rng, region=(32, 0, 64, 32))
    large.save(photos / "site" / "large.tif")
    (photos / "broken.jpg").write_bytes(b"not an image")
    (photos / "notes.txt").write_text("not an image file name: skipped")
    result = run(
        "predict.py", "backend=onnx", f"model={model}", f"input={photos}",
        f"hydra.run.dir={tmp_path / 'predict'}", python_options=("-X", "importtime"),
    )  # fmt: skip
    assert "4 files: 3 read, 1 unreadable." in result.stdout
    # With an exported model nothing needs Lightning, torchmetrics or TensorBoard: seconds of
    # start-up a photo folder on a laptop does not pay (-X importtime lists every import).
    imported = {line.rsplit("|", 1)[-1].strip() for line in result.stderr.splitlines()}
    assert not imported & {"lightning", "torchmetrics", "torch.utils.tensorboard"}
    assert "onnxruntime" in imported
    assert "1 large photos scanned in 15 tiles" in result.stdout
    rows = {
        Path(r["path"]).name: r
        for r in csv.DictReader((tmp_path / "predict" / "predictions.csv").open())
    }
    assert set(rows) == {"a.jpg", "b.png", "large.tif", "broken.jpg"}
    assert rows["broken.jpg"]["error"] and not rows["broken.jpg"]["probability"]
    assert rows["large.tif"]["tiles"] == "15" and rows["a.jpg"]["tiles"] == "0"
    heatmap = tmp_path / "predict" / "heatmaps" / "site" / "large.tif.png"
    assert rows["large.tif"]["heatmap"] == str(heatmap) and Image.open(heatmap).format == "PNG"
    report = (tmp_path / "predict" / "report.html").read_text()
    assert report.count('<div class="card') == 4 and 'href="heatmaps/site/large.tif.png"' in report


def test_predict_fails_only_when_no_file_is_readable(demo_run, tmp_path):
    ckpt = demo_run / "run" / "checkpoints" / "best.ckpt"
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "broken.png").write_bytes(b"not an image")
    result = run("predict.py", f"ckpt={ckpt}", f"input={tmp_path / 'in'}",
                 f"hydra.run.dir={tmp_path / 'out'}", check=False)  # fmt: skip
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "None of the 1 files" in result.stderr and "could be read" in result.stderr
    rows = list(csv.DictReader((tmp_path / "out" / "predictions.csv").open()))
    assert len(rows) == 1 and "UnidentifiedImageError" in rows[0]["error"]


@pytest.mark.parametrize("backbone", ["mobilenet_v3_large", "efficientnet_b0"])
def test_other_backbones_train_evaluate_export_and_predict(backbone, tmp_path):
    """model.backbone=NAME: the whole path, staged unfreezing (and so the feature cache at a
    cut inside the backbone) included, on each backbone's own blocks."""
    run_dir = tmp_path / "run"
    trained = run(
        "train.py", "experiment=finetune", "head_epochs=1", "trainer.max_epochs=2",
        f"model.backbone={backbone}", "model.weights=null", f"data.root={tmp_path / 'data'}",
        "+data.synthetic={n_per_class:20,image_size:32,seed:0}", "data.image_size=32",
        "data.batch_size=16", "data.num_workers=0", f"hydra.run.dir={run_dir}",
    )  # fmt: skip
    assert "Feature cache on" in (run_dir / "train.log").read_text()
    ckpt = run_dir / "checkpoints" / "best.ckpt"
    assert torch.load(ckpt, weights_only=True)["hyper_parameters"]["backbone"] == backbone
    # export.py and predict.py below rebuild the model from the checkpoint file as eval.py does
    # (eval.py itself is tested above): an eval.py process here would add start-up time only.
    assert printed_test_metrics(trained.stdout).keys() >= {"accuracy", "auroc"}
    exported = run("export.py", f"ckpt={ckpt}", f"hydra.run.dir={tmp_path / 'export'}")
    assert "Parity check passed." in exported.stdout
    photos = tmp_path / "photos"
    photos.mkdir()
    make_image(np.random.default_rng(0), 32, crack=True).save(photos / "a.png")
    predicted = run(
        "predict.py", f"ckpt={ckpt}", f"input={photos}", f"hydra.run.dir={tmp_path / 'predict'}"
    )
    assert "1 files: 1 read, 0 unreadable." in predicted.stdout


def test_adapt_starts_from_a_trained_model_and_keeps_its_last_epoch(demo_run, tmp_path):
    """experiment=adapt: fixed epochs, every orientation stored, the last epoch kept and
    calibrated on the new surface's validation photos; no test split."""
    missing = run("train.py", "experiment=adapt", f"hydra.run.dir={tmp_path / 'x'}", check=False)
    assert missing.returncode == 2 and "init_from=CKPT" in missing.stderr
    ckpt = demo_run / "run" / "checkpoints" / "best.ckpt"
    run_dir = tmp_path / "adapt"
    run(
        "train.py", "experiment=adapt", f"init_from={ckpt}", f"data.root={tmp_path / 'surface'}",
        "+data.synthetic={n_per_class:10,image_size:32,seed:7}", "data.image_size=32",
        "data.batch_size=8", "data.num_workers=0", "trainer.max_epochs=2",
        f"hydra.run.dir={run_dir}",
    )  # fmt: skip
    log = (run_dir / "train.log").read_text()
    assert "Feature cache on" in log and "in 8 orientations" in log and "Calibrated on 6" in log
    manifest = (run_dir / "manifest.csv").read_text()
    assert ",test," not in manifest  # every photo trains or calibrates
    best = torch.load(run_dir / "checkpoints" / "best.ckpt", weights_only=True)
    assert best["epoch"] == 1 and "calibration" in best  # the last of 2 epochs


def test_train_refuses_calibration_settings_no_fit_can_use_before_it_trains(tmp_path):
    for override in ("calibration.percentile=0", "calibration.recall=1.5"):
        result = run("train.py", "experiment=demo", override,
                     f"hydra.run.dir={tmp_path / 'run'}", check=False)  # fmt: skip
        errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
        assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
        assert len(errors) == 1 and override.split("=")[0] in errors[0], errors
        assert not (tmp_path / "run" / "checkpoints").exists()  # stopped before any training
