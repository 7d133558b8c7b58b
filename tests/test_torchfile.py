"""Files that are not plain PyTorch data are refused with a message of ours."""

import os

import pytest
import torch
from PIL import Image

from crack.errors import UserError
from crack.torchfile import describe_file, load_plain


class RunsCode:
    """Unpickling this calls os.mkdir: what a malicious file would do."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.mkdir, (self.marker,)


def test_what_a_file_is_when_it_is_not_a_pytorch_file(tmp_path):
    Image.new("RGB", (8, 8)).save(tmp_path / "photo.jpg")
    (tmp_path / "notes.ckpt").write_text("hello")
    (tmp_path / "empty.ckpt").write_bytes(b"")
    torch.save({"a": torch.zeros(2)}, tmp_path / "good.pt")
    torch.save({"a": torch.zeros(2)}, tmp_path / "legacy.pt", _use_new_zipfile_serialization=False)
    assert describe_file(tmp_path / "photo.jpg") == "a JPEG image"
    assert describe_file(tmp_path / "notes.ckpt") == "a text file"
    assert describe_file(tmp_path / "empty.ckpt") == "an empty file"
    assert describe_file(tmp_path / "good.pt") is None
    assert describe_file(tmp_path / "legacy.pt") is None


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("missing.ckpt", "does not exist"),
        ("photo.jpg", "is not a PyTorch file but a JPEG image"),
        ("notes.ckpt", "is not a PyTorch file but a text file"),
        ("cut.pt", "is truncated or corrupted"),
        ("evil.pt", r"is refused: it holds pickled objects .*GLOBAL posix.mkdir"),
    ],
)
def test_refusals_name_the_option_the_file_and_what_is_expected(tmp_path, name, expected):
    Image.new("RGB", (8, 8)).save(tmp_path / "photo.jpg")
    (tmp_path / "notes.ckpt").write_text("hello")
    torch.save({"a": torch.zeros(1000)}, tmp_path / "good.pt")
    data = (tmp_path / "good.pt").read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    marker = tmp_path / "code_ran"
    torch.save({"a": RunsCode(str(marker))}, tmp_path / "evil.pt")
    with pytest.raises(UserError, match=rf"model.weights_path='.*{name}' {expected}") as error:
        load_plain(tmp_path / name, "model.weights_path", "a MobileNetV2 state_dict")
    assert "a MobileNetV2 state_dict." in str(error.value)  # what is expected
    assert "weights_only=False" not in str(error.value)  # torch's unsafe advice is not passed on
    assert not marker.exists()
