"""Fail safe: bad input is refused with one line and exit status 2, and no result is lost.

End to end where the user sees it (the entry points as subprocesses); in-process where a fault
must be injected at a precise point (a heatmap write failing mid-run).
"""

from __future__ import annotations

import csv
import errno
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import ENV, ROOT, assert_refused, run_entry
from PIL import Image

from crack.errors import UserError
from crack.export import model_metadata
from crack.files import list_images
from crack.inference import predict_files, write_predictions
from crack.preprocessing import Preprocessing
from crack.synthetic import make_dataset, make_image, make_texture

SMALL = ["data.image_size=32", "data.batch_size=16", "data.num_workers=0", "model.weights=null"]


class RunsCode:
    """Unpickling this calls os.mkdir: what a malicious checkpoint would do."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.mkdir, (self.marker,)


class ConstantClassifier:
    """A stand-in model: 0.75 for every image, 32 px inputs."""

    def __init__(self) -> None:
        self.preprocessing = Preprocessing(image_size=32)
        self.classes = ["intact", "crack"]
        self.threshold = 0.5
        self.familiarity_threshold = float("inf")

    def __call__(self, images: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        return np.full(len(images), 0.75, np.float32), np.zeros(len(images), np.float32)


def tiny_onnx(path: Path, metadata: dict[str, str] | None) -> Path:
    """A valid ONNX model with export.py's input and output (the sigmoid of the mean pixel)."""
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [
            helper.make_node("ReduceMean", ["image"], ["mean"], axes=[1, 2, 3], keepdims=0),
            helper.make_node("Sigmoid", ["mean"], ["crack_probability"]),
        ],
        "tiny",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 3, 32, 32])],
        [helper.make_tensor_value_info("crack_probability", TensorProto.FLOAT, ["N"])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    if metadata is not None:
        helper.set_model_props(model, metadata)
    onnx.save(model, str(path))
    return path


def photos(folder: Path, names_sizes: dict[str, int]) -> Path:
    """Synthetic photos ``name: side`` under ``folder``; sides over 48 px are tiled (32 px model)."""
    rng = np.random.default_rng(0)
    for name, size in names_sizes.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        photo = make_image(rng, size, crack=True) if size <= 48 else make_texture(rng, size, size)
        photo.save(folder / name)
    return folder


# Refused checkpoints: eval.py ckpt=FILE


def _write_bad_checkpoint(kind: str, folder: Path) -> Path:
    path = folder / f"{kind}.ckpt"
    if kind == "text":
        path.write_text("epoch=3 val_loss=0.12\n")
    elif kind == "jpeg":
        Image.new("RGB", (16, 16)).save(path, format="JPEG")
    elif kind == "code":
        torch.save({"state_dict": {}, "x": RunsCode(str(folder / "code_ran"))}, path)
    elif kind == "foreign":
        torch.save({"state_dict": {"weight": torch.zeros(2)}, "epoch": 3}, path)
    return path  # "missing": not written


@pytest.mark.parametrize(
    ("kind", "words"),
    [
        ("missing", ["does not exist", "a checkpoint written by train.py"]),
        ("text", ["is not a PyTorch file but a text file", "train.py"]),
        ("jpeg", ["is not a PyTorch file but a JPEG image", "train.py"]),
        ("code", ["is refused", "could run code", "GLOBAL posix.mkdir", "train.py"]),
        ("foreign", ["is not a crack classifier checkpoint", "train.py"]),
    ],
)
def test_refused_checkpoints_are_one_line_and_exit_status_2(kind, words, tmp_path):
    ckpt = _write_bad_checkpoint(kind, tmp_path)
    result = run_entry("eval.py", f"ckpt={ckpt}", f"hydra.run.dir={tmp_path / 'run'}")
    line = assert_refused(result, f"ckpt='{ckpt}'", *words)
    assert "weights_only=False" not in line  # torch's unsafe advice is never passed on
    assert not (tmp_path / "code_ran").exists()


# Refused ONNX models: predict.py backend=onnx model=FILE


@pytest.mark.parametrize(
    ("kind", "words"),
    [
        ("garbage", ["is not an ONNX model ONNX Runtime can load", "python export.py"]),
        ("no_metadata", ["lacks the metadata", "python export.py"]),
        ("bad_metadata", ["has unreadable metadata", "mean", "python export.py"]),
    ],
)
def test_refused_onnx_models_are_one_line_and_exit_status_2(kind, words, tmp_path):
    model = tmp_path / f"{kind}.onnx"
    if kind == "garbage":
        model.write_bytes(b"\x00\x01 this is not a protobuf \xff" * 10)
    elif kind == "no_metadata":
        tiny_onnx(model, None)
    else:
        metadata = model_metadata(Preprocessing(image_size=32), ["intact", "crack"], 0.5)
        tiny_onnx(model, {**metadata, "mean": "[0.5, 0.5,"})
    photos(tmp_path / "in", {"a.png": 32})
    result = run_entry(
        "predict.py", "backend=onnx", f"model={model}", f"input={tmp_path / 'in'}",
        f"hydra.run.dir={tmp_path / 'run'}",
    )  # fmt: skip
    assert_refused(result, f"model='{model}'", *words)


def test_a_tiny_onnx_model_with_metadata_predicts(tmp_path):
    # The models of the refusal tests above fail for their metadata alone, not for the graph.
    metadata = model_metadata(Preprocessing(image_size=32), ["intact", "crack"], 0.5)
    model = tiny_onnx(tmp_path / "ok.onnx", metadata)
    photos(tmp_path / "in", {"a.png": 32})
    result = run_entry(
        "predict.py", "backend=onnx", f"model={model}", f"input={tmp_path / 'in'}",
        "heatmaps=false", f"hydra.run.dir={tmp_path / 'run'}",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert "1 files: 1 read, 0 unreadable." in result.stdout


# Refused data and settings: train.py


def test_a_missing_data_folder_is_one_line_and_exit_status_2(tmp_path):
    result = run_entry(
        "train.py", f"data.root={tmp_path / 'nowhere'}", *SMALL, f"hydra.run.dir={tmp_path / 'r'}"
    )
    assert_refused(result, f"data.root='{tmp_path / 'nowhere'}' is not a folder", "data.root")


def test_a_label_conflict_is_one_line_and_exit_status_2(tmp_path):
    root = make_dataset(tmp_path / "data", n_per_class=4, image_size=32, seed=0)
    first = sorted((root / "Positive").iterdir())[0]
    shutil.copy(first, root / "Negative" / "copy_of_a_crack.png")
    result = run_entry("train.py", f"data.root={root}", *SMALL, f"hydra.run.dir={tmp_path / 'r'}")
    assert_refused(result, "under both classes", "data.on_conflict=drop")


def test_a_weights_file_holding_code_is_one_line_and_exit_status_2(tiny_dataset, tmp_path):
    evil = tmp_path / "evil.pth"
    torch.save({"features.0.0.weight": RunsCode(str(tmp_path / "code_ran"))}, evil)
    result = run_entry(
        "train.py", f"data.root={tiny_dataset}", *SMALL, f"model.weights_path={evil}",
        "model.weights=IMAGENET1K_V1", f"hydra.run.dir={tmp_path / 'r'}",
    )  # fmt: skip
    line = assert_refused(result, f"model.weights_path='{evil}'", "refused")
    assert "weights_only=False" not in line
    assert not (tmp_path / "code_ran").exists()


# Unreadable images are bad files, like corrupt ones


def test_an_unreadable_image_is_listed_and_skipped_or_stops_the_run(tmp_path, monkeypatch):
    from crack.classes import find_classes
    from crack.index import index_images
    from crack.settings import DataSettings

    root = make_dataset(tmp_path / "data", n_per_class=5, image_size=32, seed=0)
    locked = sorted((root / "Positive").iterdir())[0]
    if os.geteuid() != 0:
        locked.chmod(0)
    else:  # root reads any file: make this one fail as it does for anyone else
        real_open = Path.open

        def open_unless_locked(self, *args, **kwargs):
            if self == locked:
                raise PermissionError(errno.EACCES, "Permission denied", str(self))
            return real_open(self, *args, **kwargs)

        monkeypatch.setattr(Path, "open", open_unless_locked)
    classes = find_classes(root)
    samples, summary = index_images(root, classes)
    name = locked.relative_to(root).as_posix()
    assert summary["bad_files"] == {
        name: f"PermissionError: [Errno 13] Permission denied: '{locked}'"
    }
    assert len(samples) == 9 and name not in {s.path for s in samples}
    with pytest.raises(UserError, match=rf"(?s)1 image file.*{name}: PermissionError"):
        index_images(root, classes, DataSettings(root=str(root), on_bad_file="error"))


# Outputs: never lost, never overwritten, never shared


def test_heatmap_names_keep_subfolders_and_extensions_apart(tmp_path):
    folder = photos(
        tmp_path / "in", {"wall.jpg": 64, "wall.png": 64, "a/b.jpg": 64, "a__b.jpg": 64}
    )
    results = list(
        predict_files(
            ConstantClassifier(), list_images(folder), 0.5, heatmap_dir=tmp_path / "maps",
            root=folder,
        )
    )  # fmt: skip
    heatmaps = {r.path.relative_to(folder).as_posix(): r.heatmap for r in results}
    maps = tmp_path / "maps"
    assert heatmaps == {
        "a/b.jpg": maps / "a" / "b.jpg.png",
        "a__b.jpg": maps / "a__b.jpg.png",
        "wall.jpg": maps / "wall.jpg.png",
        "wall.png": maps / "wall.png.png",
    }
    assert all(Image.open(path).format == "PNG" for path in heatmaps.values())


def test_a_failing_heatmap_keeps_the_rows_of_the_photos_before_it(tmp_path, monkeypatch):
    folder = photos(tmp_path / "in", {"a.png": 32, "b.png": 64, "c.png": 32, "d.png": 64})
    written = []

    def fail_on_the_second(figure, path):
        if written:
            raise OSError(errno.ENOSPC, "No space left on device")
        written.append(path)
        return path

    monkeypatch.setattr("crack.inference.save_figure", fail_on_the_second)
    csv_path = tmp_path / "predictions.csv"
    results = predict_files(
        ConstantClassifier(), list_images(folder), 0.5, heatmap_dir=tmp_path / "maps", root=folder
    )
    with pytest.raises(OSError, match="No space"):
        write_predictions(csv_path, results, 0.5, ["intact", "crack"])
    rows = list(csv.DictReader(csv_path.open()))
    assert [Path(r["path"]).name for r in rows] == ["a.png", "b.png", "c.png"]
    assert rows[1]["heatmap"] == str(written[0]) and rows[1]["tiles"] == "9"


def test_a_full_disk_during_prediction_keeps_the_rows_and_names_the_folder(mount_tmpfs, tmp_path):
    disk = mount_tmpfs("300k")
    metadata = model_metadata(Preprocessing(image_size=32), ["intact", "crack"], 0.5)
    model = tiny_onnx(tmp_path / "ok.onnx", metadata)
    folder = photos(tmp_path / "in", {"a.png": 32, "b.png": 32, "c.png": 512})
    result = run_entry(
        "predict.py", "backend=onnx", f"model={model}", f"input={folder}",
        f"hydra.run.dir={disk / 'run'}",
    )  # fmt: skip
    assert_refused(result, "no space left", str(disk / "run" / "heatmaps"), "hydra.run.dir=DIR")
    rows = list(csv.DictReader((disk / "run" / "predictions.csv").open()))
    assert [Path(r["path"]).name for r in rows] == ["a.png", "b.png"]
    assert not list((disk / "run" / "heatmaps").iterdir())  # no half-written heatmap


def test_a_full_disk_during_training_leaves_no_partial_checkpoint(
    mount_tmpfs, tiny_dataset, tmp_path
):
    # 2 MB: room for the logs, not for a checkpoint (about 9 MB). $TMPDIR is on another
    # filesystem, where Lightning's own writer would have copied a partial file from.
    disk = mount_tmpfs("2m")
    result = run_entry(
        "train.py", "experiment=frozen", f"data.root={tiny_dataset}", *SMALL,
        "trainer.max_epochs=1", "test=false", f"hydra.run.dir={disk / 'run'}",
    )  # fmt: skip
    checkpoints = disk / "run" / "checkpoints"
    assert_refused(result, "no space left", str(checkpoints), "hydra.run.dir=DIR")
    assert not checkpoints.exists() or not list(checkpoints.iterdir())


def test_a_read_only_run_directory_is_one_line_and_exit_status_2(mount_tmpfs, tmp_path):
    read_only = mount_tmpfs(read_only=True)
    photos(tmp_path / "in", {"a.png": 32})
    result = run_entry(
        "predict.py", "backend=onnx", f"model={tmp_path / 'm.onnx'}", f"input={tmp_path / 'in'}",
        f"hydra.run.dir={read_only / 'run'}",
    )  # fmt: skip
    assert_refused(
        result, f"cannot write into the run directory {read_only / 'run'}", "hydra.run.dir"
    )


def test_two_runs_started_together_get_two_run_directories(tmp_path):
    # Started from tmp_path, so that their logs/train/ is there and holds only these two.
    def start() -> subprocess.Popen:
        return subprocess.Popen(
            [sys.executable, str(ROOT / "train.py"), f"data.root={tmp_path / 'nowhere'}", *SMALL],
            cwd=tmp_path,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env={**ENV, "CRACK_CACHE_DIR": os.environ["CRACK_CACHE_DIR"]},
        )

    processes = [start(), start()]
    started = time.monotonic()
    for process in processes:
        process.communicate(timeout=300)
        assert process.returncode == 2
    runs = sorted((tmp_path / "logs" / "train").iterdir())
    assert len(runs) == 2, f"{runs} ({time.monotonic() - started:.1f} s)"
    for run in runs:  # each its own log, written by one process
        assert (run / "train.log").read_text().count("Seed set to 42") <= 1
