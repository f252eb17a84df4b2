"""The CPU kernels genmodels routes around (ELU/SELU by exp, image-facing convolutions
without oneDNN, binary cross-entropy, dropout masks): the same values and gradients as
PyTorch's own."""

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch
import torch.nn.functional as F

from genmodels.errors import GenmodelsError
from genmodels.nn import Dropout
from genmodels.nn.layers import Conv2d, ConvTranspose2d, make_activation
from genmodels.nn.losses import (
    binary_cross_entropy_with_logits,
)


@pytest.mark.parametrize("name, reference", [("selu", torch.nn.functional.selu),
                                             ("elu", torch.nn.functional.elu)])
def test_cpu_elu_and_selu_are_pytorchs_in_values_and_gradients(name, reference):
    torch.manual_seed(0)
    activation = make_activation(name)
    x = torch.cat([torch.linspace(-30, 30, 601), torch.randn(2**16) * 1e-4]).requires_grad_()
    assert activation(x).grad_fn.name().startswith("_ELUByExp")  # the CPU path ran
    assert activation(x[:1000]).grad_fn.name() == "EluBackward0"  # small: PyTorch's kernel
    assert torch.allclose(activation(x), reference(x), rtol=1e-6, atol=2e-7)
    grad = torch.randn_like(x)
    ours, = torch.autograd.grad(activation(x), x, grad)
    theirs, = torch.autograd.grad(reference(x), x, grad)
    assert torch.allclose(ours, theirs, rtol=1e-6, atol=1e-6)
    small = torch.randn(12, dtype=torch.double, requires_grad=True)  # also twice (penalties)
    assert torch.autograd.gradgradcheck(make_activation(name), (small,))


@pytest.mark.parametrize("layer", [
    Conv2d(1, 8, 5, stride=2, padding=2), Conv2d(3, 8, 3, padding=1),
    ConvTranspose2d(8, 1, 5, stride=2, padding=2, output_padding=1),
    ConvTranspose2d(8, 3, 4, stride=2, padding=1)])
def test_image_convolutions_without_onednn_are_pytorchs(layer):
    torch.manual_seed(0)
    x = torch.randn(4, layer.in_channels, 9, 9, requires_grad=True)
    reference = super(type(layer), layer).forward  # nn.Conv2d's / nn.ConvTranspose2d's
    ours, theirs = layer(x), reference(x)
    assert ours.grad_fn.name().startswith("SlowConv")  # PyTorch's own CPU kernel ran
    assert torch.allclose(ours, theirs, atol=1e-5)
    grad = torch.randn_like(ours)
    inputs = [x, layer.weight, layer.bias]
    for a, b in zip(torch.autograd.grad(ours, inputs, grad),
                    torch.autograd.grad(theirs, inputs, grad), strict=True):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-4)
    small = layer.double()  # differentiable twice, for gradient penalties (R1, WGAN-GP)
    x = torch.randn(1, layer.in_channels, 3, 3, dtype=torch.double, requires_grad=True)
    assert torch.autograd.gradgradcheck(lambda x: small(x), (x,))


def test_cpu_binary_cross_entropy_is_pytorchs_in_values_and_gradients():
    torch.manual_seed(0)
    logits = torch.cat([torch.linspace(-40, 40, 801), torch.randn(999)]).requires_grad_()
    target = torch.rand(1800)
    ours = binary_cross_entropy_with_logits(logits, target)
    assert ours.grad_fn.name().startswith("_BCEWithLogitsByLog")  # the CPU path ran
    theirs = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    assert torch.allclose(ours, theirs, rtol=1e-6, atol=1e-6)  # float32 rounding
    grad = torch.randn_like(ours)
    assert torch.allclose(*(torch.autograd.grad(loss, logits, grad)[0] for loss in (ours, theirs)),
                          rtol=1e-5, atol=1e-6)


def test_dropout_keeps_the_expectation_and_is_off_in_eval():
    torch.manual_seed(0)
    layer = Dropout(0.4)
    x = torch.ones(200_000)
    y = layer(x)
    assert abs((y == 0).float().mean().item() - 0.4) < 0.01
    assert abs(y.mean().item() - 1.0) < 0.01
    assert torch.equal(layer.eval()(x), x)
    with pytest.raises(GenmodelsError, match="dropout probability"):
        Dropout(1.0)


def test_dropout_passes_gradients_through_kept_units():
    x = torch.ones(1000, requires_grad=True)
    y = Dropout(0.5)(x)
    y.sum().backward()
    assert torch.equal(x.grad, (y.detach() != 0).float() * 2)


def test_image_convolutions_leave_the_process_wide_onednn_switch_alone():
    # Another thread must never see oneDNN switched off (it once was, around each call,
    # and after two threads ran convolutions it could stay off for the process).
    layers = [Conv2d(1, 8, 3), ConvTranspose2d(8, 1, 3)]
    x = torch.randn(8, 1, 12, 12)
    seen, done = set(), threading.Event()

    def watch():
        while not done.is_set():
            seen.add(torch.backends.mkldnn.enabled)

    def convolve():
        for _ in range(30):
            layers[1](layers[0](x)).sum().backward()

    watcher = threading.Thread(target=watch)
    watcher.start()
    with ThreadPoolExecutor(2) as pool:
        list(pool.map(lambda _: convolve(), range(2)))
    done.set()
    watcher.join()
    assert seen == {True} and torch.backends.mkldnn.enabled
