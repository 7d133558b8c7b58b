"""The stores of crack/cache.py: the same results as without them, and rebuilt exactly when needed."""

from __future__ import annotations

import logging
import shutil
from functools import partial
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from PIL import Image

from crack.cache import FeatureCache, feature_store, image_store, plan_cache
from crack.callbacks import StagedUnfreezing
from crack.checkpoint import load_trained_model
from crack.data import CrackDataModule, ImageFileDataset, StoredInputs
from crack.metrics import evaluation_metrics
from crack.model import CrackClassifier
from crack.preprocessing import Augmentation
from crack.store import StoredDataset
from crack.synthetic import make_dataset

SIZE = 32
FINETUNE = [{"epoch": 1, "blocks": 2, "lr_factor": 0.1}]  # features[:17] frozen throughout


@pytest.fixture(scope="module")
def backbone(tiny_dataset) -> dict[str, torch.Tensor]:
    """A random-init backbone whose BatchNorm statistics are those of the tiny images.

    With the default statistics a random backbone's output barely depends on its input (it
    varies by 1e-8 across images), which would hide any error in stored features.
    """
    dm = CrackDataModule(str(tiny_dataset), image_size=SIZE, num_workers=0)
    dm.setup()
    images = ImageFileDataset(dm.root, dm.samples, dm.preprocessing.transform())
    torch.manual_seed(0)
    features = CrackClassifier(weights=None).features
    norms = [m for m in features.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    for norm in norms:
        norm.momentum = None  # running statistics = the statistics of the batch below
    with torch.no_grad():
        features.train()(torch.stack([x for x, _ in images]))
    for norm in norms:
        norm.momentum = 0.1
    return features.state_dict()


def _model(backbone: dict[str, torch.Tensor]) -> CrackClassifier:
    torch.manual_seed(0)
    model = CrackClassifier(weights=None, optimizer=partial(torch.optim.Adam, lr=1e-2))
    model.features.load_state_dict(backbone)
    # A head large enough for its logits to vary by several units across images.
    torch.nn.init.normal_(model.head[-1].weight, 0, 0.1)
    return model


def _datamodule(root: Path, cache_dir: Path, **kwargs) -> CrackDataModule:
    kwargs = {"image_size": SIZE, "batch_size": 8, "num_workers": 0, **kwargs}
    return CrackDataModule(str(root), cache_dir=str(cache_dir), **kwargs)


class LossRecorder(L.Callback):
    def __init__(self) -> None:
        self.losses: list[float] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.losses.append(float(outputs["loss"]))


def _fit(model, datamodule, milestones, epochs=2, runtime="auto", **trainer_kwargs) -> L.Trainer:
    inference = {"runtime": runtime}
    cache = FeatureCache(milestones, enabled=datamodule.settings.cache, inference=inference)
    trainer = L.Trainer(
        max_epochs=epochs,
        callbacks=[StagedUnfreezing(milestones), cache, LossRecorder()],
        logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, accelerator="cpu", **trainer_kwargs,
    )  # fmt: skip
    trainer.fit(model, datamodule=datamodule)
    return trainer


def _stores(cache_dir: Path, kind: str) -> set[str]:
    """The names of the complete stores of a kind (a folder each; partial builds start with .)."""
    return {p.name for p in (cache_dir / kind).glob("[!.]*") if p.is_dir()}


@pytest.mark.parametrize(("block", "dtype"), [(19, np.float16), (17, np.float32)])
def test_stored_features_give_the_same_logits(
    backbone, tiny_dataset, tmp_path, block, dtype, caplog
):
    """The store is filled through ONNX Runtime (the default on a CPU); the model, in
    PyTorch, gives the same logits from its rows as from the images."""
    model = _model(backbone).eval()
    dm = _datamodule(tiny_dataset, tmp_path)
    dm.setup()
    images = ImageFileDataset(dm.root, dm.samples, dm.preprocessing.transform())
    with caplog.at_level(logging.INFO, logger="crack.cache"):
        arrays = feature_store(tmp_path, images, dm.preprocessing, model, block, 8, 0)
    assert f"features[:{block}] run by ONNX Runtime float32" in caplog.text
    stored = np.load(arrays["features"])
    assert stored.dtype == dtype and stored.shape[:2] == (len(dm.samples), 1)  # one orientation
    stored = stored[:, 0]

    batch = torch.stack([images[i][0] for i in range(len(images))])
    with torch.inference_mode():
        direct = model(batch)
        cached = model.forward_from(torch.from_numpy(stored).float(), block)
    scale = direct.abs().max()
    assert scale > 2 and direct.std() > 1  # logits that vary across images
    torch.testing.assert_close(cached, direct, rtol=0, atol=float(5e-4 * scale))
    assert torch.equal(cached > 0, direct > 0)
    # The unfamiliar-photo statistics come from the same pass, as the model computes them.
    with torch.inference_mode():
        _, described = model.features_until(batch, len(model.features), statistics=True)
    stored_statistics = torch.from_numpy(np.load(arrays["statistics"]))
    assert stored_statistics.shape == described.shape == (len(batch), 2 * (64 + 64 + 64))
    torch.testing.assert_close(stored_statistics, described, rtol=1e-3, atol=1e-4)  # batches of 8


@pytest.mark.parametrize(
    ("milestones", "augment"),
    [([], {}), (FINETUNE, {}), ([], {"hflip": True, "vflip": True, "rot90": True}),
     (FINETUNE, {"hflip": True})],
    ids=["frozen", "finetune", "frozen-8-orientations", "finetune-hflip"],
)  # fmt: skip
def test_training_on_stored_features_follows_the_same_trajectory(
    backbone, tiny_dataset, tmp_path, milestones, augment
):
    """Stored outputs of every orientation, one drawn per image and epoch, train exactly as
    computing the flipped images' outputs every epoch does."""
    runs = {}
    for cache in (False, True):
        L.seed_everything(0)
        dm = _datamodule(tiny_dataset, tmp_path, cache=cache, augment=augment)
        model = _model(backbone)
        # Both through PyTorch: this is about what the store holds and which rows each epoch
        # reads. ONNX Runtime's results differ in the last bits (test_stored_features_give_the_
        # same_logits), which 16 steps at lr 1e-2 amplify past 1e-3 in a weight or two.
        trainer = _fit(model, dm, milestones, runtime="torch")
        runs[cache] = (trainer.callbacks[2].losses, model, trainer)

    (plain_losses, plain, _), (cached_losses, cached, trainer) = runs[False], runs[True]
    drawn = {key[1] for key in trainer.train_dataloader.sampler if isinstance(key, tuple)}
    variants = set(Augmentation(**augment).variants())
    assert (len(drawn) > 1 and drawn <= variants) if augment else not drawn
    assert cached.input_block == (17 if milestones else 19)
    assert isinstance(trainer.train_dataloader.dataset, StoredDataset)
    assert len(cached_losses) == len(plain_losses) == 8
    assert max(abs(a - b) for a, b in zip(cached_losses, plain_losses, strict=True)) < 1e-3
    assert len(set(plain_losses)) > 4  # it trained: the losses moved
    for name, value in plain.state_dict().items():
        torch.testing.assert_close(cached.state_dict()[name], value, rtol=0, atol=1e-3)


def test_checkpoint_trained_on_stored_features_evaluates_images_alike(
    backbone, tiny_dataset, tmp_path
):
    L.seed_everything(0)
    model, dm = _model(backbone), _datamodule(tiny_dataset, tmp_path)
    checkpoint = L.pytorch.callbacks.ModelCheckpoint(dirpath=tmp_path, filename="best")
    trainer = L.Trainer(
        max_epochs=1, callbacks=[StagedUnfreezing([]), FeatureCache([]), checkpoint],
        logger=False, enable_progress_bar=False, enable_model_summary=False, accelerator="cpu",
    )  # fmt: skip
    trainer.fit(model, datamodule=dm)
    (metrics,) = trainer.test(model, datamodule=dm, ckpt_path="best", verbose=False)
    assert isinstance(trainer.test_dataloaders.dataset, StoredDataset)

    # What eval.py does: the checkpoint alone, raw image files.
    trained = load_trained_model(tmp_path / "best.ckpt")
    assert trained.model.input_block == 0
    test = [s for s in trained.samples if s.split == "test"]
    images = ImageFileDataset(trained.root, test, trained.preprocessing.transform())
    with torch.inference_mode():
        probs = torch.sigmoid(trained.model(torch.stack([x for x, _ in images])))
    again = evaluation_metrics(probs, torch.tensor([s.label for s in test]))
    for name in ("accuracy", "precision", "recall", "f1", "auroc"):
        assert again[name] == pytest.approx(metrics[f"test/{name}"], abs=1e-3), name


def test_feature_store_is_reused_and_rebuilt_exactly_when_its_inputs_change(
    backbone, tiny_dataset, tmp_path
):
    root = tmp_path / "data"
    shutil.copytree(tiny_dataset, root)
    cache = tmp_path / "cache"
    model = _model(backbone)

    def store(image_size=SIZE, block=17, **kwargs) -> Path:
        dm = _datamodule(root, cache, image_size=image_size, **kwargs)
        dm.setup()
        test = dm.split_samples("test")
        images = ImageFileDataset(dm.root, test, dm.preprocessing.transform())
        variants = dm.preprocessing.augmentation.variants()
        return feature_store(cache, images, dm.preprocessing, model, block, 8, 0, variants)[
            "features"
        ]

    first = store()
    built = first.stat().st_mtime_ns
    assert store() == first and first.stat().st_mtime_ns == built  # reused, not rewritten
    assert _stores(cache, "features") == {first.parent.name}

    with torch.no_grad():  # weights outside features[:17] are not part of the key
        model.features[18][0].weight.add_(1.0)
        model.head[-1].weight.add_(1.0)
    assert store() == first

    changed = {
        "image size": store(image_size=40),
        "normalisation": store(mean=[0.5, 0.5, 0.5]),
        "cut point": store(block=16),
        "orientations": store(augment={"hflip": True}),
    }
    weight = model.features[3].conv[0][0].weight
    running_mean = model.features[5].conv[0][1].running_mean  # BatchNorm statistics count too
    for name, tensor in (("weights", weight), ("running statistics", running_mean)):
        original = tensor.detach().clone()
        with torch.no_grad():
            tensor.mul_(1.01)
        changed[name] = store()
        with torch.no_grad():
            tensor.copy_(original)
    assert store() == first  # back as it was: the old store again

    dm = _datamodule(root, cache)
    dm.setup()
    test_file = root / dm.split_samples("test")[0].path
    pixels = np.asarray(Image.open(test_file)).copy()
    pixels[:4, :4] = 255 - pixels[:4, :4]  # a small change in one file
    Image.fromarray(pixels).save(test_file)
    changed["one file"] = store()

    paths = [first, *changed.values()]
    assert len(set(paths)) == len(paths), changed
    assert _stores(cache, "features") == {p.parent.name for p in paths}
    np.testing.assert_array_equal(np.load(changed["one file"])[1:], np.load(first)[1:])
    assert not np.array_equal(np.load(changed["one file"])[0], np.load(first)[0])


def test_image_store_serves_the_same_tensors_with_and_without_augmentation(tiny_dataset, tmp_path):
    for augment in ({}, {"hflip": True, "vflip": True, "brightness": 0.3, "contrast": 0.3}):
        loaders = {}
        for cache in (False, True):
            dm = _datamodule(tiny_dataset, tmp_path, augment=augment)
            dm.setup()
            if cache:
                images = dm.files_dataset(dm.preprocessing.resize())
                dm.serve(StoredInputs(image_store(tmp_path, images, SIZE, 8, 0)))
            loaders[cache] = dm.train_dataloader()
        assert isinstance(loaders[True].dataset, StoredDataset)
        assert isinstance(loaders[False].dataset, ImageFileDataset)
        for key in (0, 5, (3, 6), (4, 2)):
            torch.manual_seed(1)
            plain = loaders[False].dataset[key]
            torch.manual_seed(1)
            stored = loaders[True].dataset[key]
            assert stored[1] == plain[1]
            torch.testing.assert_close(stored[0], plain[0], rtol=0, atol=0)
    # One store: augmentation comes after it, and the file list and size are the same.
    assert len(_stores(tmp_path, "images")) == 1


def test_image_store_is_rebuilt_when_the_image_size_changes(tiny_dataset, tmp_path):
    def store(image_size):
        dm = _datamodule(tiny_dataset, tmp_path, image_size=image_size)
        dm.setup()
        images = ImageFileDataset(dm.root, dm.split_samples("val"), dm.preprocessing.resize())
        return image_store(tmp_path, images, image_size, 8, 0)

    assert store(32) == store(32) != store(48)
    assert np.load(store(48)).shape == (4, 3, 48, 48) and np.load(store(48)).dtype == np.uint8


@pytest.mark.parametrize(
    ("setting", "block", "reason"),
    [
        ({}, 19, ""),
        ({"trainable": 2}, 17, ""),
        ({"augment": {"hflip": True, "rot90": True}}, 19, ""),  # orientations are stored
        ({"trainable": 19}, 0, "unfreezes every block"),
        ({"trainable": None}, 0, "every block trains"),
        ({"cache": False}, 0, "data.cache=false"),
        ({"augment": {"brightness": 0.2}}, 0, "random augmentation is on"),
    ],
)
def test_plan_decides_which_blocks_and_says_why_not(setting, block, reason):
    plan = plan_cache(
        setting.get("cache", True),
        Augmentation(**setting.get("augment", {})),
        setting.get("trainable", 0),
        19,
    )
    assert plan.block == block and reason in plan.reason and bool(plan.reason) == (block == 0)
    assert plan.images == (block == 0 and setting.get("cache", True))


def test_feature_cache_logs_once_why_it_is_off(backbone, tiny_dataset, tmp_path, caplog):
    model = _model(backbone)
    dm = _datamodule(tiny_dataset, tmp_path, augment={"brightness": 0.2})
    with caplog.at_level(logging.INFO, logger="crack.cache"):
        _fit(model, dm, [], epochs=1, limit_train_batches=1, limit_val_batches=1)
    off = [r.message for r in caplog.records if "Feature cache" in r.message]
    assert len(off) == 1 and "random augmentation is on" in off[0]
    assert model.input_block == 0
    assert _stores(tmp_path, "images") and not _stores(tmp_path, "features")


def test_a_second_datamodule_reuses_the_stores(backbone, tmp_path, caplog):
    root = make_dataset(tmp_path / "data", n_per_class=6, image_size=SIZE, seed=2)
    for run in ("first", "second"):
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="crack.cache"):
            _fit(_model(backbone), _datamodule(root, tmp_path / "cache"), [], epochs=1)
        built = [r.message for r in caplog.records if " built in " in r.message]
        reused = [r.message for r in caplog.records if " reused in " in r.message]
        # One store for all splits: built at the fit setup, reused at the test setup.
        assert (len(built), len(reused)) == ((1, 0) if run == "first" else (0, 1)), run
