import pytest
import torch
from torch.hub import load_state_dict_from_url
from torchvision.models import mobilenet_v2

from crack.backbones import get_backbone
from crack.model import CrackClassifier
from crack.weights import WeightsUnavailableError, torchvision_cache_path

# Taken at import, before the autouse fixture replaces it with an offline stub.
REAL_LOAD_STATE_DICT_FROM_URL = load_state_dict_from_url


@pytest.fixture
def reference_state():
    torch.manual_seed(123)
    return mobilenet_v2(weights=None).state_dict()


def _assert_backbone_equals(model, state):
    for key, value in model.features.state_dict().items():
        assert torch.equal(value, state[f"features.{key}"]), key


def test_full_state_dict_file(tmp_path, reference_state, caplog):
    torch.save(reference_state, tmp_path / "full.pth")
    model = CrackClassifier(weights=None, weights_path=str(tmp_path / "full.pth"))
    _assert_backbone_equals(model, reference_state)


def test_features_only_file(tmp_path, reference_state):
    features = {k: v for k, v in reference_state.items() if k.startswith("features.")}
    torch.save(features, tmp_path / "features.pth")
    model = CrackClassifier(weights="IMAGENET1K_V1", weights_path=str(tmp_path / "features.pth"))
    _assert_backbone_equals(model, reference_state)  # the local file wins over the download


def test_missing_and_unexpected_keys_are_reported(tmp_path, reference_state, caplog):
    state = dict(reference_state)
    del state["features.18.1.weight"]
    state["extra.weight"] = torch.zeros(1)
    torch.save(state, tmp_path / "partial.pth")
    CrackClassifier(weights=None, weights_path=str(tmp_path / "partial.pth"))
    assert "18.1.weight" in caplog.text and "extra.weight" in caplog.text


def test_wrong_shapes_are_refused(tmp_path, reference_state):
    state = dict(reference_state)
    state["features.0.0.weight"] = torch.zeros(16, 3, 3, 3)
    torch.save(state, tmp_path / "other.pth")
    with pytest.raises(ValueError, match="shape mismatches"):
        CrackClassifier(weights=None, weights_path=str(tmp_path / "other.pth"))


def test_not_a_mobilenet_file_is_refused(tmp_path):
    torch.save({"conv.weight": torch.zeros(1)}, tmp_path / "other.pth")
    with pytest.raises(ValueError, match="not a torchvision mobilenet_v2"):
        CrackClassifier(weights=None, weights_path=str(tmp_path / "other.pth"))
    with pytest.raises(ValueError, match="model.weights_path"):
        CrackClassifier(weights=None, weights_path=str(tmp_path / "missing.pth"))


def test_offline_download_names_cache_path_and_alternative(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(WeightsUnavailableError) as error:
        CrackClassifier(weights="IMAGENET1K_V1")
    message = str(error.value)
    expected = tmp_path / "hub" / "checkpoints" / "mobilenet_v2-b0353104.pth"
    assert torchvision_cache_path(get_backbone("mobilenet_v2"), "IMAGENET1K_V1") == expected
    assert str(expected) in message and "model.weights_path" in message


def test_weights_in_torch_cache_load_offline(tmp_path, monkeypatch, reference_state):
    """A file placed at the path the error names is used without any network access."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    path = torchvision_cache_path(get_backbone("mobilenet_v2"), "IMAGENET1K_V1")
    path.parent.mkdir(parents=True)
    torch.save(reference_state, path)
    # torch.hub reads the cached file before it would download anything.
    monkeypatch.setattr(
        "torchvision.models._api.load_state_dict_from_url", REAL_LOAD_STATE_DICT_FROM_URL
    )
    monkeypatch.setattr("urllib.request.urlopen", lambda *a, **k: pytest.fail("tried to download"))
    model = CrackClassifier(weights="IMAGENET1K_V1")
    _assert_backbone_equals(model, reference_state)


def test_unknown_weights_name():
    with pytest.raises(ValueError, match="IMAGENET1K_V2"):
        CrackClassifier(weights="IMAGENET_BEST")
