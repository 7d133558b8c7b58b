"""The benchmark itself, on tiny synthetic images and a random-init weights file."""

import json

import pytest
import torch
from torchvision.models import mobilenet_v2

from benchmarks import training as bench

ROWS = (
    "plain", "frozen", "frozen_reuse", "finetune", "finetune_reuse", "finetune_fp32",
    "finetune_bf16", "finetune_unfolded",
)  # fmt: skip
FLOORS = ("floor", "floor_torch", "floor_bf16")


@pytest.fixture
def weights_file(tmp_path):
    """A random-init MobileNetV2 backbone state_dict, as a local weights file."""
    torch.manual_seed(0)
    features = mobilenet_v2(weights=None).features.state_dict()
    path = tmp_path / "weights.pth"
    torch.save({f"features.{k}": v for k, v in features.items()}, path)
    return path


def test_bench_times_every_run_and_writes_the_figures(tiny_dataset, tmp_path, weights_file, capsys):
    out = tmp_path / "bench.json"
    bench.main(
        [
            f"--data-root={tiny_dataset}", f"--weights-path={weights_file}",
            "--epochs=1", "--image-size=32", f"--out={out}", "--batch-size=16",
            "--num-workers=0", "--bf16-rows=yes",
        ]
    )  # fmt: skip

    results = json.loads(out.read_text())
    assert set(results) == {
        *ROWS, *FLOORS, "speedup_frozen", "speedup_finetune", "speedup_finetune_fp32",
        "speedup_finetune_bf16",
        "frozen_over_floor", "floor_speedup_vs_torch", "settings", "machine",
    }  # fmt: skip
    assert results["settings"]["images"] == {"train": 32, "val": 4, "test": 4}
    assert results["settings"]["finetune_head_epochs"] == 0  # so finetune unfreezes
    read = 1 * (32 + 4) + 4
    for name in ROWS:
        row = results[name]
        assert set(row) == {"seconds", "images_per_s", "test_accuracy"}, name
        assert row["seconds"] > 0 and 0 <= row["test_accuracy"] <= 1
        assert row["images_per_s"] == pytest.approx(read / row["seconds"], rel=0.01)
    for name in FLOORS:
        assert set(results[name]) == {"seconds", "images_per_s", "runtime"}
        assert results[name]["images_per_s"] == pytest.approx(
            40 / results[name]["seconds"], rel=0.01
        )
    assert results["floor"]["runtime"] == "ONNX Runtime float32 (CPU)"
    assert results["floor_torch"]["runtime"] == "PyTorch float32 (cpu)"
    assert results["floor_bf16"]["runtime"] == "PyTorch bfloat16 autocast (cpu)"
    seconds = {name: results[name]["seconds"] for name in (*ROWS, *FLOORS)}
    assert results["speedup_frozen"] == pytest.approx(
        seconds["plain"] / seconds["frozen"], abs=0.01
    )
    assert results["speedup_finetune"] == pytest.approx(
        seconds["plain"] / seconds["finetune"], abs=0.01
    )
    assert results["frozen_over_floor"] == pytest.approx(
        seconds["frozen"] / seconds["floor"], abs=0.01
    )
    assert results["floor_speedup_vs_torch"] == pytest.approx(
        seconds["floor_torch"] / seconds["floor"], abs=0.01
    )
    assert results["machine"]["usable_cpus"] >= 1 and "cpu" in results["machine"]
    printed = capsys.readouterr().out
    assert all(name in printed for name in (*ROWS, *FLOORS)) and str(out) in printed


def test_run_phases_prints_the_phases_of_each_run(tiny_dataset, weights_file, capsys):
    from benchmarks import run_phases

    run_phases.main(
        [
            f"--data-root={tiny_dataset}", f"--weights-path={weights_file}",
            "--epochs=2", "--image-size=32", "--runs=2",
        ]
    )  # fmt: skip
    printed = capsys.readouterr().out
    assert "run 1 (building the stores)" in printed and "run 2 (reusing the stores)" in printed
    second = printed.split("run 2 (reusing the stores)")[1]
    # Two epochs: two training epochs' batches, a last checkpoint each epoch, the store reused.
    for label in ("trainer.fit", "training batches", "checkpoints saved", "feature cache"):
        assert label in second, label
    assert " in 0 calls" not in second


def test_bench_leaves_out_the_bfloat16_rows_where_they_would_be_emulated():
    names = [name for name, _, _ in bench._runs(3, bench.Path("cache"), bf16=False)]
    assert "finetune_bf16" not in names and "finetune_fp32" in names
    assert [name for name, _, _ in bench._floors(False)] == ["floor", "floor_torch"]
    everything = [name for name, _, _ in bench._runs(3, bench.Path("cache"))]
    assert everything == [*names[:5], "finetune_bf16", names[5]]
    assert bench._floors(True) == bench.FLOORS
