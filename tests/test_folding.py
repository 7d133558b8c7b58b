import copy

import pytest
import torch
from torch import nn
from torchvision.models import mobilenet_v2

from crack.folding import fold, is_folded, unfold


def _blocks() -> nn.Sequential:
    """MobileNetV2's last 4 blocks, BatchNorm statistics unlike a fresh layer's."""
    torch.manual_seed(0)
    blocks = mobilenet_v2().features[15:]
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
    loss = blocks(x).square().mean()
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in blocks.named_parameters()}


def test_folded_blocks_compute_the_same_values_and_gradients():
    plain = _blocks()
    folded = copy.deepcopy(plain)
    _eval_batchnorm(plain)
    _eval_batchnorm(folded)
    fold(folded)
    assert is_folded(folded) and not is_folded(plain)
    x = torch.randn(4, 160, 7, 7)
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
