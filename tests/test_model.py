import pytest
import torch

from crack.errors import UserError
from crack.model import CrackClassifier


def test_forward_gives_one_logit_per_image():
    model = CrackClassifier(weights=None).eval()
    assert model(torch.randn(3, 3, 32, 32)).shape == (3,)


def test_head_and_loss():
    model = CrackClassifier(weights=None, dropout=0.3, pos_weight=2.0)
    assert model.head[2].p == 0.3
    assert model.head[3].in_features == 1280 and model.head[3].out_features == 1
    assert model.loss_fn.pos_weight.item() == 2.0


def test_optimizer_from_partial_and_default_adam():
    from functools import partial

    model = CrackClassifier(weights=None, optimizer=partial(torch.optim.SGD, lr=0.5))
    assert isinstance(model.configure_optimizers(), torch.optim.SGD)
    assert isinstance(CrackClassifier(weights=None).configure_optimizers(), torch.optim.Adam)


def test_scheduler_from_partial():
    from functools import partial

    model = CrackClassifier(
        weights=None, scheduler=partial(torch.optim.lr_scheduler.StepLR, step_size=1)
    )
    config = model.configure_optimizers()
    assert isinstance(config["lr_scheduler"]["scheduler"], torch.optim.lr_scheduler.StepLR)


def test_hparams_are_plain_data():
    model = CrackClassifier(weights=None, dropout=0.1)
    assert dict(model.hparams) == {
        "backbone": "mobilenet_v2", "weights": None, "weights_path": None, "dropout": 0.1,
        "pos_weight": None, "statistics_blocks": [8, 9, 10],
    }  # fmt: skip


@pytest.mark.parametrize(
    ("backbone", "blocks", "channels"),
    [("mobilenet_v2", 19, 1280), ("mobilenet_v3_large", 17, 960), ("efficientnet_b0", 9, 1280)],
)
def test_every_backbone_keeps_the_contract(backbone, blocks, channels):
    """features: a Sequential of blocks; the head sized to its channels; any cut point works."""
    model = CrackClassifier(backbone=backbone, weights=None).eval()
    assert isinstance(model.features, torch.nn.Sequential) and len(model.features) == blocks
    assert model.head[3].in_features == channels
    images = torch.randn(2, 3, 32, 32)
    with torch.inference_mode():
        logits = model(images)
        for block in (1, blocks - 1, blocks):
            again = model.forward_from(model.features_until(images, block), block)
            torch.testing.assert_close(again, logits, rtol=0, atol=1e-5)


def test_unknown_backbone_is_refused_with_the_choices():
    with pytest.raises(UserError, match="efficientnet_b0"):
        CrackClassifier(backbone="resnet50", weights=None)


def test_sanity_check_on_one_class_batches_gives_no_auroc_warning():
    """Validation in file order can start with crack photos only: the sanity check must not warn
    that AUROC is undefined, and the epoch's validation still logs it."""
    import warnings

    import lightning as L
    from torch.utils.data import DataLoader, TensorDataset

    images = torch.randn(16, 3, 32, 32)
    labels = torch.tensor([1] * 8 + [0, 1] * 4)  # the first batch: cracks only
    loader = DataLoader(TensorDataset(images, labels), batch_size=8)
    trainer = L.Trainer(
        max_epochs=1, num_sanity_val_steps=1, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False,
    )  # fmt: skip
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.fit(CrackClassifier(weights=None), loader, loader)
    assert not [w for w in caught if "samples in targets" in str(w.message)]
    assert "val/auroc" in trainer.callback_metrics
