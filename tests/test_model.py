import torch

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
        "weights": None, "weights_path": None, "dropout": 0.1, "pos_weight": None,
    }  # fmt: skip
