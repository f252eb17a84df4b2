"""Models and building blocks: shapes, losses against closed forms, the GAN phases."""

import math

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from torch.distributions import Normal, kl_divergence

from genmodels.config import build
from genmodels.engine import essential_callbacks
from genmodels.errors import GenmodelsError
from genmodels.nn import DCGANDiscriminator, DCGANGenerator, DenseDecoder, DenseEncoder, Dropout
from genmodels.nn.layers import Conv2d, ConvTranspose2d, make_activation
from genmodels.nn.losses import (
    bernoulli_nll,
    binary_cross_entropy_with_logits,
    gaussian_nll,
    kl_to_standard_normal,
)
from genmodels.sampling import interleave_rows

from .conftest import compose_config


def test_kl_matches_torch_distributions():
    mean, logvar = torch.randn(6, 4), torch.randn(6, 4)
    expected = kl_divergence(Normal(mean, (0.5 * logvar).exp()), Normal(0.0, 1.0)).sum(1)
    assert torch.allclose(kl_to_standard_normal(mean, logvar), expected, atol=1e-5)
    assert torch.all(kl_to_standard_normal(torch.zeros(2, 3), torch.zeros(2, 3)) == 0)


def test_likelihoods_match_torch_distributions():
    x = torch.rand(3, 1, 4, 4)
    logits = torch.randn(3, 1, 4, 4)
    binary = (x > 0.5).float()
    expected = -torch.distributions.Bernoulli(logits=logits).log_prob(binary).flatten(1).sum(1)
    assert torch.allclose(bernoulli_nll(logits, binary), expected, atol=1e-5)
    expected = -Normal(logits, 0.3).log_prob(x).flatten(1).sum(1)
    assert torch.allclose(gaussian_nll(logits, x, 0.3), expected, atol=1e-4)


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
    assert ours.grad_fn.name().startswith("_ConvWithoutOneDNN")  # the CPU path ran
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


@pytest.mark.parametrize("size", [28, 32, 64])
def test_dcgan_networks_derive_their_shapes_from_the_image_size(size):
    generator = DCGANGenerator(latent_dim=8, channels=3, image_size=size)
    images = generator(torch.randn(4, 8))
    assert images.shape == (4, 3, size, size)
    assert DCGANDiscriminator(channels=3, image_size=size)(images).shape == (4,)


def test_unsupported_sizes_name_the_valid_ones():
    with pytest.raises(GenmodelsError, match="divisible by 4, got 30; valid sizes include 16"):
        DCGANGenerator(latent_dim=8, channels=1, image_size=30)
    with pytest.raises(GenmodelsError, match="channels must be 1 or 3"):
        DenseEncoder(channels=2, image_size=8, hidden_sizes=[4])
    with pytest.raises(GenmodelsError, match="Unknown activation 'swishy'"):
        DenseEncoder(channels=1, image_size=8, hidden_sizes=[4], activation="swishy")


def test_dense_autoencoder_has_the_classic_layer_sizes(tmp_path):
    model = build(compose_config(["model=ae"], tmp_path).model)
    sizes = [m.out_features for m in model.modules() if isinstance(m, torch.nn.Linear)]
    assert sizes == [100, 30, 100, 784]
    x = torch.rand(5, 1, 28, 28)
    assert model.encode(x).shape == (5, 30)
    reconstruction = model.reconstruct(x)
    assert reconstruction.shape == x.shape
    assert 0 <= reconstruction.min() <= reconstruction.max() <= 1


def test_autoencoder_samples_inside_the_range_of_its_codings(tmp_path):
    model = build(compose_config(["model=ae"], tmp_path).model)
    codings = model.encode(torch.rand(64, 1, 28, 28)).detach()
    model._track_codings_range(codings)
    model.on_train_epoch_end()
    assert torch.equal(model.codings_low, codings.amin(0))
    assert torch.equal(model.codings_high, codings.amax(0))


def test_vae_losses_are_nats_per_image_and_elbo_ignores_the_kl_weight(tmp_path):
    model = build(compose_config(["model=vae", "model.kl_weight=0.25"], tmp_path).model)
    x = torch.rand(8, 1, 28, 28)
    torch.manual_seed(0)
    losses = model.losses((x, None))
    assert torch.allclose(losses["loss"], losses["recon"] + 0.25 * losses["kl"])
    assert torch.allclose(losses["elbo"], -(losses["recon"] + losses["kl"]))
    # An untrained Bernoulli decoder costs about log(2) nats per pixel.
    assert 0.5 * 784 * math.log(2) < losses["recon"] < 2 * 784 * math.log(2)
    mean, logvar = model.posterior(x)
    assert mean.shape == logvar.shape == (8, 10)


def test_vae_refuses_bernoulli_on_minus_one_to_one_images(tmp_path):
    cfg = compose_config(["model=vae", "model.value_range=[-1.0,1.0]"], tmp_path)
    with pytest.raises(GenmodelsError, match="bernoulli needs value_range"):
        build(cfg.model)


class RecordParameters(L.Callback):
    """Snapshots G's and D's weights around each optimizer step of the first batch."""

    def __init__(self):
        self.snapshots = []

    def on_train_batch_start(self, trainer, gan, batch, batch_idx):
        def snapshot():
            return ([p.detach().clone() for p in gan.discriminator.parameters()],
                    [p.detach().clone() for p in gan.generator.parameters()])

        self.snapshots.append(snapshot())
        for optimizer in trainer.optimizers:
            optimizer.register_step_post_hook(lambda *args: self.snapshots.append(snapshot()))


def changed(before, after) -> bool:
    return any(not torch.equal(a, b) for a, b in zip(before, after, strict=True))


def test_gan_phases_update_only_their_own_network(tmp_path):
    from genmodels.data import DigitsDataModule

    gan = build(compose_config(["model=dcgan"], tmp_path).model)
    recorder = RecordParameters()
    trainer = L.Trainer(max_steps=2, limit_val_batches=0, logger=False,
                        callbacks=[*essential_callbacks(), recorder],
                        enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, accelerator="cpu")
    trainer.fit(gan, DigitsDataModule(batch_size=16, value_range=[-1.0, 1.0]))
    (d0, g0), (d1, g1), (d2, g2) = recorder.snapshots[:3]
    assert changed(d0, d1) and not changed(g0, g1)  # phase 1: only D
    assert changed(g1, g2) and not changed(d1, d2)  # phase 2: only G


def test_interleave_rows_puts_each_row_of_inputs_over_its_outputs():
    inputs = torch.arange(16.0).view(16, 1, 1, 1)
    pairs = torch.stack([inputs, -inputs], dim=1)
    order = interleave_rows(pairs, row_length=8).flatten().tolist()
    assert order[:8] == list(range(8)) and order[8:16] == [-v for v in range(8)]
    assert order[16:24] == list(range(8, 16))


def test_dense_decoder_outputs_images():
    assert DenseDecoder(latent_dim=3, channels=3, image_size=5,
                        hidden_sizes=[7])(torch.randn(2, 3)).shape == (2, 3, 5, 5)
