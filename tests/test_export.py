import numpy as np
import pytest
import torch

from crack.checkpoint import load_trained_model
from crack.errors import UserError
from crack.export import (
    ProbabilityModel,
    export_onnx,
    export_torchscript,
    max_abs_difference,
    parity_images,
    parse_metadata,
    read_torchscript_metadata,
)
from crack.inference import OnnxClassifier, TorchClassifier, predict_files
from crack.synthetic import draw_crack, make_image, make_texture


@pytest.fixture(scope="module")
def trained(trained_checkpoint):
    trained = load_trained_model(trained_checkpoint)
    model = ProbabilityModel.of(trained.model)
    return trained, model


def test_onnx_export_matches_pytorch_and_carries_the_preprocessing(trained, tmp_path):
    trained, model = trained
    path = export_onnx(model, tmp_path / "m.onnx", trained.preprocessing, trained.classes, 0.4)
    images, what = parity_images(trained.root, trained.samples, trained.preprocessing, 16)
    assert images.shape == (16, 3, 32, 32) and "test-split" in what
    assert max_abs_difference(model, path, images, "onnx") < 1e-4
    assert max_abs_difference(model, path, images[:3], "onnx") < 1e-4  # any batch size

    onnx_model = OnnxClassifier(path)
    assert onnx_model.preprocessing == trained.preprocessing
    assert onnx_model.classes == trained.classes and onnx_model.threshold == 0.4
    probs, scores = onnx_model(images)  # 16 images: in passes of a few (CPU_PASS_SIZE)
    with torch.no_grad():
        expected_probs, expected_scores = model(images)
    assert probs.shape == scores.shape == (16,)
    np.testing.assert_allclose(probs, expected_probs.numpy(), atol=1e-4)
    np.testing.assert_allclose(scores, expected_scores.numpy(), rtol=1e-3)


def test_predict_through_onnx_runtime_gives_the_pytorch_results(
    trained, trained_checkpoint, tmp_path
):
    trained, model = trained
    path = export_onnx(model, tmp_path / "m.onnx", trained.preprocessing, trained.classes, 0.5)
    rng = np.random.default_rng(0)
    files = [tmp_path / f"{i}.png" for i in range(3)]
    make_image(rng, 32, crack=True).save(files[0])
    make_image(rng, 32, crack=False).save(files[1])
    draw_crack(make_texture(rng, 100, 60, scale=0.5), rng, region=(0, 0, 32, 32)).save(files[2])
    by_torch = list(predict_files(TorchClassifier(trained_checkpoint), files, 0.5))
    by_onnx = list(predict_files(OnnxClassifier(path), files, 0.5))
    assert [r.tiles for r in by_onnx] == [0, 0, 6 * 3]
    for a, b in zip(by_torch, by_onnx, strict=True):
        assert a.probability == pytest.approx(b.probability, abs=1e-4)
    np.testing.assert_allclose(
        by_torch[2].tile_probabilities, by_onnx[2].tile_probabilities, atol=1e-4
    )


def test_torchscript_export_matches_pytorch(trained, tmp_path):
    trained, model = trained
    path = export_torchscript(model, tmp_path / "m.pt", trained.preprocessing, trained.classes, 0.5)
    images, _ = parity_images(trained.root, trained.samples, trained.preprocessing, 8)
    assert max_abs_difference(model, path, images, "torchscript") < 1e-4
    metadata = parse_metadata(read_torchscript_metadata(path), str(path))
    familiarity = float(model.familiarity.threshold)
    assert metadata == (trained.preprocessing, trained.classes, 0.5, familiarity)


def test_parity_images_stand_in_when_the_training_data_is_gone(trained, tmp_path):
    trained, _ = trained
    images, what = parity_images(tmp_path / "gone", trained.samples, trained.preprocessing, 4)
    assert images.shape == (4, 3, 32, 32) and "synthetic" in what


def test_metadata_errors_name_the_fix():
    with pytest.raises(UserError, match=r"lacks the metadata .*python export.py"):
        parse_metadata({"image_size": "224"}, "model='x.onnx'")


def test_exports_carry_the_calibration_and_the_unfamiliar_score(trained_checkpoint, tmp_path):
    """Temperature and familiarity statistics go into the file: both outputs match PyTorch."""
    import torch

    trained = load_trained_model(trained_checkpoint)
    images, _ = parity_images(trained.root, trained.samples, trained.preprocessing, 8)
    model = trained.model
    with torch.no_grad():
        model.temperature.fill_(2.5)
        described = torch.randn(50, model.familiarity.mean.numel())
        model.familiarity.fit(torch.cat([described, described[:10] + 1]))
    exported = ProbabilityModel.of(model)
    path = export_onnx(exported, tmp_path / "c.onnx", trained.preprocessing, trained.classes, 0.3)
    onnx_model = OnnxClassifier(path)
    assert onnx_model.familiarity_threshold == pytest.approx(float(model.familiarity.threshold))
    probs, scores = onnx_model(images)
    with torch.inference_mode():
        logits, expected_scores = model.eval().describe(images)
    np.testing.assert_allclose(probs, torch.sigmoid(logits / 2.5).numpy(), atol=1e-4)
    np.testing.assert_allclose(scores, expected_scores.numpy(), rtol=1e-3, atol=1e-3)
    assert scores.std() > 0  # scores that differ between images
