import copy

import pytest
import torch
from torch import nn
from torchvision.models import efficientnet_b0, mobilenet_v2, mobilenet_v3_large

from crack.folding import fold, is_folded, unfold


def _blocks(backbone=mobilenet_v2, last: int = 4) -> nn.Sequential:
    """A backbone's last blocks, BatchNorm statistics unlike a fresh layer's."""
    torch.manual_seed(0)
    blocks = backbone().features[-last:]
    for module in blocks.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
            module.weight.data.uniform_(0.5, 1.5)
            module.bias.data.uniform_(-0.2, 0.2)
    return blocks


def _eval_batchnorm(blocks: nn.Sequential) -> None:
    blocks.train()
    for module in blocks.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.eval()


def _loss_and_grads(blocks: nn.Sequential, x: torch.Tensor) -> tuple[torch.Tensor, dict]:
    blocks.zero_grad()
    torch.manual_seed(1)  # EfficientNet's stochastic depth drops the same samples in both
    loss = blocks(x).square().mean()
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in blocks.named_parameters()}


@pytest.mark.parametrize("backbone", [mobilenet_v2, mobilenet_v3_large, efficientnet_b0])
def test_folded_blocks_compute_the_same_values_and_gradients(backbone):
    plain = _blocks(backbone, last=3)
    folded = copy.deepcopy(plain)
    _eval_batchnorm(plain)
    _eval_batchnorm(folded)
    fold(folded)
    assert is_folded(folded) and not is_folded(plain)
    first = next(m for m in plain.modules() if isinstance(m, nn.Conv2d))
    x = torch.randn(4, first.in_channels, 7, 7)
    loss, grads = _loss_and_grads(plain, x)
    folded_loss, folded_grads = _loss_and_grads(folded, x)
    assert folded_loss == pytest.approx(float(loss), rel=1e-5)
    assert grads.keys() == folded_grads.keys()
    for name, grad in grads.items():  # the convolutions' and the BatchNorm scales and shifts
        assert torch.allclose(folded_grads[name], grad, rtol=1e-4, atol=1e-6), name
    # The same modules, parameters and buffers: checkpoints do not see the folding.
    assert folded.state_dict().keys() == plain.state_dict().keys()
    unfold(folded)
    assert not is_folded(folded)


def test_folded_forward_skips_the_batchnorm_operator_and_keeps_its_statistics():
    blocks = _blocks()
    _eval_batchnorm(blocks)
    fold(blocks)
    called = []
    for module in blocks.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.register_forward_hook(lambda *_: called.append(1))
    means = [m.running_mean.clone() for m in blocks.modules() if isinstance(m, nn.BatchNorm2d)]
    blocks(torch.randn(2, 160, 7, 7)).sum().backward()
    assert called == []
    after = [m.running_mean for m in blocks.modules() if isinstance(m, nn.BatchNorm2d)]
    assert all(torch.equal(a, b) for a, b in zip(after, means, strict=True))


def test_batchnorm_in_training_mode_runs_as_itself_when_folded():
    plain = _blocks().train()
    folded = copy.deepcopy(plain)
    fold(folded)
    x = torch.randn(4, 160, 7, 7)
    assert torch.allclose(folded(x), plain(x), atol=1e-6)
    norms = zip(folded.modules(), plain.modules(), strict=True)
    for a, b in norms:  # batch statistics used and the running ones updated alike
        if isinstance(a, nn.BatchNorm2d):
            assert torch.allclose(a.running_mean, b.running_mean, atol=1e-6)


def test_a_batchnorm_without_scale_and_shift_runs_as_itself():
    torch.manual_seed(0)
    layers = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4, affine=False)).eval()
    layers[1].running_var.fill_(2.0)
    x = torch.randn(2, 3, 8, 8)
    expected = layers(x)
    fold(layers)
    called = []
    layers[1].register_forward_hook(lambda *_: called.append(1))
    assert torch.equal(layers(x), expected) and called == [1]
