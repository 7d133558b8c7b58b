"""Shared fixtures: tiny synthetic datasets, generated per test session (no ../shared, no network)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from crack.synthetic import make_dataset

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _few_threads():
    # Tiny models run faster on one thread than with the thread pool's overhead.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True, scope="session")
def _cache_in_tmp(tmp_path_factory):
    """Stored images and features go to a temporary folder, not the working directory."""
    before = os.environ.get("CRACK_CACHE_DIR")
    os.environ["CRACK_CACHE_DIR"] = str(tmp_path_factory.mktemp("crack-cache"))
    yield
    if before is None:
        del os.environ["CRACK_CACHE_DIR"]
    else:
        os.environ["CRACK_CACHE_DIR"] = before


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory) -> Path:
    """20 crack + 20 intact 32 px images in Positive/ and Negative/."""
    return make_dataset(tmp_path_factory.mktemp("tiny"), n_per_class=20, image_size=32, seed=1)


@pytest.fixture(autouse=True)
def _no_download(monkeypatch):
    """Tests never download: a torchvision weights request fails as it does offline."""
    from urllib.error import URLError

    def offline(*args, **kwargs):
        raise URLError("no network in tests")

    monkeypatch.setattr("torch.hub.load_state_dict_from_url", offline)
    monkeypatch.setattr("torchvision.models._api.load_state_dict_from_url", offline)
