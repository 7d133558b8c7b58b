import logging

import numpy as np
import pytest
import torch

import crack.runtime
from crack.checkpoint import load_trained_model
from crack.errors import UserError
from crack.export import ProbabilityModel
from crack.familiarity import block_statistics
from crack.runtime import ForwardRunner
from crack.synthetic import make_image


def synthetic_images(trained, count: int, seed: int) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    transform = trained.preprocessing.transform()
    return torch.stack([transform(make_image(rng, 32, crack=i % 2 == 1)) for i in range(count)])


@pytest.fixture(scope="module")
def model(trained_checkpoint):
    """The exported parts of a trained model, with a temperature and fitted familiarity."""
    trained = load_trained_model(trained_checkpoint)
    classifier = trained.model
    classifier.temperature.fill_(1.7)
    images = synthetic_images(trained, 24, seed=0)
    with torch.no_grad():
        _, described = block_statistics(classifier.features, images, classifier.statistics_blocks)
    classifier.familiarity.fit(described)
    return ProbabilityModel.of(classifier), synthetic_images(trained, 9, seed=1)


def test_onnx_runtime_gives_the_pytorch_float32_results(model):
    model, images = model
    by_torch = ForwardRunner(model, images, runtime="torch")
    by_onnx = ForwardRunner(model, images, runtime="auto")
    assert by_onnx.session is not None and "ONNX Runtime" in by_onnx.name
    assert by_torch.session is None and by_torch.name == "PyTorch float32 (cpu)"
    for batch in (images, images[:1], images[2:7]):  # any batch size
        (p_torch, f_torch), (p_onnx, f_onnx) = by_torch(batch), by_onnx(batch)
        assert p_onnx.dtype == torch.float32 and p_onnx.shape == (len(batch),)
        assert (p_torch - p_onnx).abs().max() < 1e-4
        assert (f_torch - f_onnx).abs().max() < 1e-3 * f_torch.abs().max()
    assert float(p_torch.std()) > 0.01  # the probabilities differ between images


class CountingSession:
    """An ONNX Runtime session that records the batch size of each run."""

    def __init__(self, session, sizes: list[int]) -> None:
        self.session, self.sizes = session, sizes

    def run(self, names, inputs):
        self.sizes.append(len(next(iter(inputs.values()))))
        return self.session.run(names, inputs)


@pytest.mark.parametrize("runtime", ["torch", "auto"])
def test_a_batch_runs_in_passes_of_a_few_images_with_the_results_of_one_pass(model, runtime):
    model, images = model  # 9 images
    whole = ForwardRunner(model, images, runtime=runtime, pass_size=len(images))
    runner = ForwardRunner(model, images, runtime=runtime, pass_size=4)
    default = ForwardRunner(model, images, runtime=runtime)
    kind = "torch" if runner.session is None else "onnxruntime"
    assert kind == ("torch" if runtime == "torch" else "onnxruntime")
    assert default.pass_size == crack.runtime.CPU_PASS_SIZE[kind]

    sizes: list[int] = []
    if runner.session is None:
        hook = model.register_forward_pre_hook(lambda _, args: sizes.append(len(args[0])))
        try:
            in_passes = runner(images)
        finally:
            hook.remove()
    else:
        runner.session = CountingSession(runner.session, sizes)
        in_passes = runner(images)
    assert sizes == [4, 4, 1]
    for one, several in zip(whole(images), in_passes, strict=True):
        assert several.shape == one.shape and several.dtype == one.dtype
        assert (several - one).abs().max() <= 1e-5 * max(1.0, float(one.abs().max()))


def test_without_onnx_runtime_auto_falls_back_to_pytorch(model, monkeypatch):
    model, _ = model
    monkeypatch.setattr(crack.runtime, "onnxruntime_available", lambda: False)
    images = torch.rand(2, 3, 32, 32)
    runner = ForwardRunner(model, images, runtime="auto")
    assert runner.session is None and runner.name.startswith("PyTorch")
    with pytest.raises(UserError, match="onnxruntime package is not installed"):
        ForwardRunner(model, images, runtime="onnxruntime")


def test_a_model_onnx_cannot_take_runs_in_pytorch_or_is_refused(model, monkeypatch, caplog):
    model, _ = model

    def unsupported(module, example):
        raise RuntimeError("Exporting the operator 'aten::weird' is not supported")

    monkeypatch.setattr(crack.runtime, "_onnx_bytes", unsupported)
    images = torch.rand(2, 3, 32, 32)
    with caplog.at_level(logging.WARNING):
        runner = ForwardRunner(model, images, runtime="auto")
    assert runner.session is None and "aten::weird" in caplog.text
    with pytest.raises(UserError, match="cannot run this model.*aten::weird"):
        ForwardRunner(model, images, runtime="onnxruntime")


def test_bf16_runs_in_pytorch_autocast_close_to_float32(model):
    model, images = model
    exact = ForwardRunner(model, images, runtime="torch")(images)[0]
    runner = ForwardRunner(model, images, runtime="auto", precision="bf16")
    assert runner.session is None and "bfloat16" in runner.name
    reduced = runner(images)[0]
    assert reduced.dtype == torch.float32 and (reduced - exact).abs().max() < 0.1


@pytest.mark.parametrize(
    "runtime, precision, words",
    [
        ("tensorrt", "32", "not one of"),
        ("auto", "16", "not one of"),
        ("onnxruntime", "bf16", "float32 only"),
    ],
)
def test_bad_options_are_refused_in_one_line(model, runtime, precision, words):
    model, _ = model
    with pytest.raises(UserError, match=words):
        ForwardRunner(model, torch.rand(1, 3, 32, 32), runtime, precision)
