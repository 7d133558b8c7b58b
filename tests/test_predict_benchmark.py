"""benchmarks.predict_then_and_now on stand-in checkouts whose predict.py only reports a rate."""

import pytest

from benchmarks import predict_then_and_now as bench

FAKE_PREDICT = """
import sys
from pathlib import Path

args = sys.argv[1:]
with open(Path(__file__).with_name("calls.txt"), "a") as calls:
    calls.write(" ".join(a for a in args if not a.startswith("hydra.")) + "\\n")
rate = {RATES}["onnx" if "backend=onnx" in args else "torch"]
print(f"1000 network inputs in 1.0 s, reading and heatmaps included ({rate} per s).")
"""


def fake_tree(path, rates):
    path.mkdir()
    (path / "predict.py").write_text(FAKE_PREDICT.replace("{RATES}", repr(rates)))
    return path


def calls(tree):
    return (tree / "calls.txt").read_text().splitlines()


def test_each_round_runs_every_command_in_a_rotating_order(tmp_path, capsys):
    then = fake_tree(tmp_path / "then", {"torch": 50.0, "onnx": 160.0})
    now = fake_tree(tmp_path / "now", {"torch": 240.0, "onnx": 0.0})
    bench.main(
        [
            f"{tmp_path}/now.ckpt", f"--then={then}", f"--now={now}",
            f"--then-ckpt={tmp_path}/then.ckpt", f"--then-onnx={tmp_path}/then.onnx",
            f"--folder={tmp_path}", "--rounds=3",
        ]
    )  # fmt: skip

    folder = f"input={tmp_path}"
    torch_call = f"ckpt={tmp_path}/then.ckpt {folder}"
    onnx_call = f"backend=onnx model={tmp_path}/then.onnx {folder}"
    assert calls(then) == [torch_call, onnx_call, onnx_call, torch_call, torch_call, onnx_call]
    assert calls(now) == [f"ckpt={tmp_path}/now.ckpt {folder}"] * 3
    out = capsys.readouterr().out
    order = [line.split()[2] for line in out.splitlines() if line.startswith("round")]
    assert order == [
        "then_pytorch", "then_onnx", "now",
        "then_onnx", "now", "then_pytorch",
        "now", "then_pytorch", "then_onnx",
    ]  # fmt: skip
    table = {line.split()[0]: line.split() for line in out.splitlines()[-3:]}
    assert table["then_pytorch"][1:3] == ["50.0", "4.80x"]
    assert table["then_onnx"][1:3] == ["160.0", "1.50x"]
    assert table["now"][1:3] == ["240.0", "1.00x"]


def test_a_failing_command_stops_the_benchmark_with_its_output(tmp_path):
    then = fake_tree(tmp_path / "then", {"torch": 50.0, "onnx": 160.0})
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "predict.py").write_text("import sys\nprint('no model here')\nsys.exit(2)\n")
    with pytest.raises(SystemExit, match="no model here"):
        bench.main(
            [
                "now.ckpt", f"--then={then}", f"--now={broken}", "--then-ckpt=a",
                "--then-onnx=b", f"--folder={tmp_path}", "--rounds=1",
            ]
        )  # fmt: skip
