"""The pieces that define ProGAN and StyleGAN, and the GAN options, each pinned by its
behaviour: deleting one of them makes a test here fail."""

import copy
import math
from functools import partial

import lightning as L
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from genmodels.config import build
from genmodels.engine import essential_callbacks
from genmodels.engine.config_in_checkpoint import ConfigInCheckpoint
from genmodels.errors import GenmodelsError
from genmodels.jobs.generate import generate
from genmodels.models.base import GenerativeModel
from genmodels.models.gan import GAN
from genmodels.nn import ConditionalGenerator
from genmodels.nn.augment import color, cutout, translation
from genmodels.nn.gan_layers import uses_batch_statistics
from genmodels.nn.progan import (
    EqualizedConv2d,
    EqualizedLinear,
    PixelNorm,
    ProGANDiscriminator,
    ProGANGenerator,
    fade_real_images,
)
from genmodels.nn.stylegan import StyleGANGenerator
from genmodels.sampling import to_uint8

from .conftest import compose_config
from .test_gans import TINY_PROGAN, TINY_STYLEGAN, fit_tiny
from .test_generate_evaluate import tool_config

# ----- toy networks whose outputs are known in closed form ------------------------------------


class ConstantImages(nn.Module):
    """A 'generator' that ignores z and returns one learnable 4x4 image."""

    def __init__(self, value: float):
        super().__init__()
        self.image = nn.Parameter(torch.full((1, 1, 4, 4), value).triu())

    def forward(self, z):
        return self.image.expand(len(z), -1, -1, -1)


class LinearCritic(nn.Module):
    """D(x) = <w, x>; records the batch size of every call."""

    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(torch.linspace(-1.0, 1.0, 16).view(1, 1, 4, 4))
        self.batch_sizes = []

    def forward(self, x):
        self.batch_sizes.append(len(x))
        return (x * self.weight).flatten(1).sum(1)


def toy_gan(**options) -> GAN:
    sgd = partial(torch.optim.SGD, lr=0.01)
    return GAN(ConstantImages(0.5), LinearCritic(), latent_dim=2, g_optimizer=sgd,
               d_optimizer=sgd, channels=1, image_size=4, value_range=[-1.0, 1.0], **options)


def toy_batches(n: int = 8, batches: int = 2) -> DataLoader:
    images = torch.linspace(-1, 1, n * batches * 16).view(n * batches, 1, 4, 4)
    return DataLoader(TensorDataset(images, torch.zeros(n * batches, dtype=torch.long)),
                      batch_size=n)


def toy_trainer(**options) -> L.Trainer:
    options["callbacks"] = [*essential_callbacks(), *options.get("callbacks", [])]
    return L.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False,
                     enable_model_summary=False, accelerator="cpu", **options)


# ----- GAN options ------------------------------------------------------------------------------


def test_label_smoothing_makes_the_bce_target_of_reals_one_minus_s():
    gan = toy_gan(label_smoothing=0.1)
    real = torch.linspace(-0.2, 1.0, 48).view(3, 1, 4, 4)
    fake = -0.5 * real
    d_real, d_fake = gan.discriminator(real), gan.discriminator(fake)
    d_loss = gan.discriminator_losses(real, None, fake, None)["d_loss"]
    bce = F.binary_cross_entropy_with_logits
    expected = (bce(d_real, torch.full_like(d_real, 0.9)) + bce(d_fake, torch.zeros(3))) / 2
    unsmoothed = (bce(d_real, torch.ones(3)) + bce(d_fake, torch.zeros(3))) / 2
    assert d_loss.item() == pytest.approx(expected.item())
    assert d_loss.item() != pytest.approx(unsmoothed.item())


def test_diffaugment_translation_shifts_each_image_whole_pixels_within_an_eighth():
    torch.manual_seed(0)
    x = torch.rand(64, 2, 16, 16) + 1  # no zeros of its own
    shifted = translation(x)
    seen = set()
    for image, original in zip(shifted, x, strict=True):
        matches = [(dy, dx) for dy in range(-2, 3) for dx in range(-2, 3)
                   if torch.equal(image, shift(original, dy, dx))]
        assert len(matches) == 1  # an 8th of 16 is 2 pixels each way
        seen.add(matches[0])
    assert len(seen) > 15  # drawn per image
    x.requires_grad_(True)
    translation(x).sum().backward()  # differentiable: 1 where a pixel stays in the frame
    assert set(x.grad.unique().tolist()) == {0.0, 1.0}


def shift(image: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    out = torch.zeros_like(image)
    h, w = image.shape[1:]
    out[:, max(dy, 0):h + min(dy, 0), max(dx, 0):w + min(dx, 0)] = \
        image[:, max(-dy, 0):h + min(-dy, 0), max(-dx, 0):w + min(-dx, 0)]
    return out


def test_diffaugment_cutout_zeroes_one_square_of_half_the_side_in_every_channel():
    torch.manual_seed(0)
    x = torch.rand(64, 3, 16, 16) + 1
    out = cutout(x)
    for image, original in zip(out, x, strict=True):
        zero = image == 0
        assert torch.equal(zero[0], zero[1]) and torch.equal(zero[0], zero[2])
        rows, cols = zero[0].nonzero(as_tuple=True)
        assert 0 < len(rows) <= 64
        # the zeros fill their bounding box, at most 8x8 (a square clipped by the border)
        height, width = rows.max() - rows.min() + 1, cols.max() - cols.min() + 1
        assert len(rows) == height * width and height <= 8 and width <= 8
        assert torch.equal(image[~zero], original[~zero])
    assert (out == 0).flatten(1).sum(1).float().mean() > 3 * 40  # most squares inside


def test_color_augmentation_keeps_a_grey_image_grey_and_varies_brightness_per_image():
    torch.manual_seed(0)
    out = color(torch.zeros(32, 3, 4, 4))
    assert torch.allclose(out, out[:, :1].expand_as(out))  # saturation needs colour
    assert out.flatten(1).std(1).max() < 1e-6 and out.mean((1, 2, 3)).std() > 0.2


def test_diffaugment_shows_d_augmented_reals_and_fakes_in_training_only():
    seen = []
    gan = toy_gan(augment=["translation", "cutout"])
    gan.discriminator.register_forward_pre_hook(lambda module, args: seen.append(args[0]))
    gan.train()
    real = torch.rand(8, 1, 4, 4) + 1
    gan.discriminator_losses(real, None, real.clone(), None)["d_loss"].backward()
    assert (seen[-1] == 0).any() and not torch.equal(seen[-1][:8], real)
    fake, _ = gan.generate(8)
    gan.discriminate(fake, None).sum().backward()  # G's gradient flows through
    assert gan.generator.image.grad.abs().sum() > 0 and (seen[-1] == 0).any()
    gan.eval()
    gan.discriminator_losses(real, None, real, None)
    assert torch.equal(seen[-1][:8], real)
    with pytest.raises(GenmodelsError, match="Unknown augmentation 'flip'.*translation"):
        toy_gan(augment=["flip"])


@pytest.mark.parametrize("half_batch", [False, True])
def test_half_batch_shows_d_half_a_batch_of_reals_and_half_of_fakes(half_batch):
    gan = toy_gan(half_batch=half_batch)
    toy_trainer(max_steps=1).fit(gan, toy_batches(n=8))
    # One D step (reals, then fakes), then one G step on a whole batch of fakes.
    assert gan.discriminator.batch_sizes == ([4, 4, 8] if half_batch else [8, 8, 8])


def test_spectral_norm_bounds_every_layer_of_d_by_one(tmp_path):
    torch.manual_seed(0)
    # PyTorch's init: its raw weights' norms are far from 1 (Glorot's can be near it)
    gan = build(compose_config(["model=dcgan", "model.spectral_norm=true",
                                "model.discriminator.init=torch"], tmp_path).model)
    d = gan.discriminator.train()
    with torch.no_grad():
        for _ in range(20):  # each training-mode call runs one power iteration
            d(torch.randn(4, 1, 28, 28))
    layers = [m for m in d.modules() if isinstance(m, nn.Linear | nn.Conv2d)]
    assert len(layers) >= 3
    for layer in layers:
        sigma = torch.linalg.matrix_norm(layer.weight.detach().flatten(1), ord=2)
        unnormalized = torch.linalg.matrix_norm(
            layer.parametrizations.weight.original.detach().flatten(1), ord=2)
        assert sigma.item() == pytest.approx(1.0, abs=0.02)
        assert unnormalized.item() != pytest.approx(1.0, abs=0.1)
    with pytest.raises(GenmodelsError, match="ProGANDiscriminator has none"):
        build(compose_config(["model=progan", "+model.spectral_norm=true"], tmp_path).model)



class LabelledConstantImages(nn.Module):
    """A conditional 'generator': a learnable image plus the class label / 10; records the
    labels it was asked for."""

    def __init__(self):
        super().__init__()
        self.image = nn.Parameter(torch.full((1, 1, 4, 4), 0.05))
        self.labels_asked = []

    def forward(self, z, labels):
        self.labels_asked.append(labels.clone())
        return self.image.expand(len(z), -1, -1, -1) + labels.view(-1, 1, 1, 1) / 10


class LabelledCritic(LinearCritic):
    """D(x, y) = <w, x> + y; records the images and labels of every call."""

    def __init__(self):
        super().__init__()
        self.calls = []

    def forward(self, x, labels):
        self.calls.append((x.detach().clone(), labels.clone()))
        return super().forward(x) + labels


def test_conditional_d_sees_fakes_of_the_real_batchs_classes_and_penalizes_within_a_class():
    # Real images are their class / 10; so are G's fakes, plus a constant image.
    torch.manual_seed(0)
    labels = torch.tensor([3, 1, 4, 1, 5, 9, 2, 6])
    real = (labels.float() / 10).view(-1, 1, 1, 1).expand(-1, 1, 4, 4).contiguous()
    sgd = partial(torch.optim.SGD, lr=0.01)
    gan = GAN(LabelledConstantImages(), LabelledCritic(), latent_dim=2, g_optimizer=sgd,
              d_optimizer=sgd, channels=1, image_size=4, value_range=[-1.0, 1.0],
              num_classes=10, penalty="gradient_penalty")
    toy_trainer(max_steps=1).fit(gan, DataLoader(TensorDataset(real, labels), batch_size=8))
    # D's step: reals, fakes, then the penalty's interpolates; each scored with the
    # labels of the real batch, so an interpolate lies between two images of its class.
    (real_seen, real_labels), (fake_seen, fake_labels), (mixed, mixed_labels) = \
        gan.discriminator.calls[:3]
    assert torch.equal(real_labels, labels) and torch.equal(gan.generator.labels_asked[0], labels)
    assert torch.equal(fake_labels, labels) and torch.equal(mixed_labels, labels)
    fake_offset = fake_seen - real_seen  # the constant image: the same for every class
    assert torch.allclose(fake_offset, fake_offset[:1].expand_as(fake_offset))
    t = (mixed - real_seen) / fake_offset
    assert torch.allclose(t, t[:, :, :1, :1].expand_as(t), atol=1e-5)  # one t per image

# ----- ProGAN -----------------------------------------------------------------------------------


@pytest.mark.parametrize("layer", [EqualizedLinear, EqualizedConv2d])
def test_equalized_learning_rate_makes_every_layer_learn_alike_whatever_its_fan_in(layer):
    torch.manual_seed(0)
    relative_changes = []
    for fan_in in (16, 1024):  # convolutions: 3x3 kernels, so fan-ins 18 and 1152
        if layer is EqualizedLinear:
            module, x = EqualizedLinear(fan_in, 64), torch.randn(256, fan_in)
        else:
            module, x = EqualizedConv2d(fan_in // 8, 64, 3), torch.randn(8, fan_in // 8, 32, 32)
        # The stored parameter is N(0, 1); the He constant is applied at run time, so the
        # output keeps the gain (sqrt 2) whatever the fan-in.
        assert module.weight.std().item() == pytest.approx(1.0, abs=0.05)
        assert module(x).std().item() == pytest.approx(math.sqrt(2), rel=0.1)
        before = (module.weight * module.scale).detach().clone()
        optimizer = torch.optim.Adam(module.parameters(), lr=1e-2)
        module(x).square().mean().backward()
        optimizer.step()
        after = (module.weight * module.scale).detach()
        relative_changes.append(((after - before).abs().mean() / before.std()).item())
    # Adam moves every stored weight by ~lr, the same share of every layer's weights.
    assert relative_changes[0] == pytest.approx(relative_changes[1], rel=0.1)


def test_pixel_norm_leaves_each_pixel_of_the_generator_with_unit_mean_square():
    torch.manual_seed(0)
    x = torch.randn(3, 16, 5, 5) * torch.rand(3, 1, 5, 5) * 10
    assert torch.allclose(PixelNorm()(x).square().mean(1), torch.ones(3, 5, 5), atol=1e-4)
    g = ProGANGenerator(16, 1, 28, max_width=16, min_width=8)
    outputs = [block.register_forward_hook(lambda m, i, out: features.append(out))
               for block in [g.first, *g.blocks[1:]]]
    features = []
    g(torch.randn(4, 16))
    assert len(features) == len(outputs) == 4
    for h in features:  # every block of G ends with pixel norm
        assert torch.allclose(h.square().mean(1), torch.ones_like(h[:, 0]), atol=1e-3)


def test_progan_generator_normalizes_its_latent_so_only_its_direction_matters():
    """Pixel norm of z (sec. 4.2 and table 2: the latent is normalized to the unit
    hypersphere): G(c z) = G(z) for any c > 0."""
    torch.manual_seed(0)
    g = ProGANGenerator(16, 1, 28, max_width=16, min_width=8, output_activation="identity")
    with torch.no_grad():
        # A trained G has biases: at zero bias the leaky ReLU and the pixel norm after the
        # first dense layer would cancel the scale of z even without normalizing z itself.
        g.first[1].bias.normal_()
    z = torch.randn(4, 16)
    with torch.no_grad():
        for c in (0.1, 7.0):
            assert (g(c * z) - g(z)).abs().max().item() < 1e-5, c


def test_progan_fade_in_blends_two_paths_of_different_dtypes():
    """Under CUDA autocast the previous resolution's path and the newest block's can end in
    different dtypes, and torch.lerp refuses such a pair (the GPU check: "expected dtype
    float for `end` but got dtype c10::BFloat16" for progan at bf16-mixed and 16-mixed).
    On the CPU a hook makes the older path float32 while autocast makes the newer one
    bfloat16; the blend is then still the float32 network's, to bfloat16's precision."""
    torch.manual_seed(0)
    g = ProGANGenerator(16, 1, 28, max_width=16, min_width=8)
    d = ProGANDiscriminator(1, 28, max_width=16, min_width=8)
    g.set_stage(1, 0.5)
    d.set_stage(1, 0.5)
    z = torch.randn(4, 16)
    with torch.no_grad():
        expected_fake = g(z)
        expected_score = d(expected_fake)
        g.to_rgb[0].register_forward_hook(lambda module, inputs, output: output.float())
        d.from_rgb[0].register_forward_hook(lambda module, inputs, output: output.float())
        with torch.autocast("cpu", dtype=torch.bfloat16):
            fake = g(z)
            score = d(expected_fake)
    assert fake.dtype == torch.bfloat16
    torch.testing.assert_close(fake.float(), expected_fake, atol=0.03, rtol=0.03)
    torch.testing.assert_close(score.float(), expected_score, atol=0.03, rtol=0.03)


def test_minibatch_stddev_lets_d_tell_how_varied_a_group_of_images_is():
    torch.manual_seed(0)
    d = ProGANDiscriminator(1, 28, max_width=8, min_width=8, group_size=4).eval()
    x = torch.randn(4, 1, 28, 28)
    others_varied = x.clone()
    others_varied[1:] = torch.randn(3, 1, 28, 28) * 3
    with torch.no_grad():
        # D judges each image alone except through the minibatch stddev feature: the same
        # first image is judged differently when the rest of its group is more varied.
        assert not torch.allclose(d(x)[0], d(others_varied)[0], atol=1e-4)
        features = torch.randn(8, 3, 2, 2)
        stat = d.last[0](features)[:, 3]
        groups = features.view(4, 2, 3, 2, 2)  # images i and i + 2 form a group of 4
        expected = groups.var(0, unbiased=False).add(1e-8).sqrt().flatten(1).mean(1)
        assert torch.allclose(stat[:, 0, 0], expected.repeat(4), atol=1e-6)


def test_real_images_fade_between_resolutions_with_the_networks():
    torch.manual_seed(0)
    x = torch.rand(2, 1, 28, 28)
    top = fade_real_images(x, stage=3, alpha=1.0)
    assert torch.equal(top, x)  # full resolution, nothing to fade
    low, high = fade_real_images(x, 1, 1.0), fade_real_images(x, 2, 1.0)
    assert torch.allclose(fade_real_images(x, 2, 0.0), low)  # fade-in starts at the old stage
    assert torch.allclose(fade_real_images(x, 2, 0.25), 0.75 * low + 0.25 * high, atol=1e-6)
    # Stage 1 shows 8x8 images, upsampled and cropped exactly as ProGAN's G does: blocks of
    # 4x4 pixels on the 32x32 canvas, 2 pixels of which are cropped from each side.
    assert torch.equal(low[..., 2:6, 2:6], low[..., 2:3, 2:3].expand(-1, -1, 4, 4))
    assert not torch.allclose(low, x, atol=0.1)


def test_progan_d_trains_on_faded_reals_and_counts_global_images(tmp_path, monkeypatch):
    # Three processes of 16 images, D on half a batch: 3 x 8 = 24 real images per D step.
    monkeypatch.setattr(L.Trainer, "world_size", property(lambda trainer: 3))
    seen = []  # per batch: its first 8 images, and what D was shown first (the reals)

    class RecordReals(L.Callback):
        def on_train_start(self, trainer, gan):
            gan.discriminator.register_forward_pre_hook(self.record)

        def on_train_batch_start(self, trainer, gan, batch, batch_idx):
            seen.append([batch[0][:8].clone()])

        def record(self, discriminator, args):
            if len(seen[-1]) == 1:
                seen[-1].append(args[0].detach().clone())

    gan, _ = fit_tiny(["model=progan", *TINY_PROGAN, "+model.half_batch=true"], tmp_path,
                      max_steps=3, callbacks=[RecordReals()])
    # Before the third D step D had seen 2 x 24 = 48 images: stage 1 (8x8), half faded in
    # (schedule: 32 stable, 32 fading).
    assert (gan.discriminator.stage, gan.discriminator.alpha) == (1, 0.5)
    raw, shown = seen[-1][:2]
    assert torch.allclose(shown, fade_real_images(raw, 1, 0.5))
    assert not torch.allclose(shown, raw, atol=0.05)


def test_drift_term_adds_epsilon_times_squared_real_scores():
    gan = toy_gan(loss="wasserstein", drift_weight=0.5)
    real = torch.linspace(-0.2, 1.0, 48).view(3, 1, 4, 4)
    fake = -0.5 * real
    d_real, d_fake = gan.discriminator(real), gan.discriminator(fake)
    logs = gan.discriminator_losses(real, None, fake, None)
    assert logs["drift"].item() == pytest.approx(d_real.square().mean().item())
    expected = d_fake.mean() - d_real.mean() + 0.5 * d_real.square().mean()
    assert logs["d_loss"].item() == pytest.approx(expected.item())
    assert compose_config(["model=progan"]).model.drift_weight == 0.001


class QuadraticCritic(nn.Module):
    """D(x) = a * sum of x^2 (a = 1 at first): its input gradient 2ax differs at every
    image, so a penalty tells which images it was measured on."""

    def __init__(self):
        super().__init__()
        self.a = nn.Parameter(torch.ones(()))

    def forward(self, x):
        return self.a * x.square().flatten(1).sum(1)


def test_r1_penalty_is_measured_on_the_real_images():
    sgd = partial(torch.optim.SGD, lr=0.01)
    gan = GAN(ConstantImages(0.5), QuadraticCritic(), latent_dim=2, g_optimizer=sgd,
              d_optimizer=sgd, channels=1, image_size=4, value_range=[-1.0, 1.0],
              loss="wasserstein", penalty="r1", penalty_weight=0.5)
    real = torch.linspace(-1.0, 1.0, 48).view(3, 1, 4, 4)
    fake = 0.25 * torch.ones(3, 1, 4, 4)  # gradients 0.5, far from the reals' 2x
    logs = gan.discriminator_losses(real, None, fake, None)
    # R1 (Mescheder et al., 2018): E_real ||grad D(x)||^2 = E ||2x||^2 on the reals.
    on_reals = (2 * real).square().flatten(1).sum(1).mean()
    on_fakes = (2 * fake).square().flatten(1).sum(1).mean()
    assert logs["penalty"].item() == pytest.approx(on_reals.item(), rel=1e-5)
    assert on_reals.item() != pytest.approx(on_fakes.item(), rel=0.1)
    critic = gan.discriminator
    wasserstein = critic(fake).mean() - critic(real).mean()
    assert logs["d_loss"].item() == pytest.approx((wasserstein + 0.5 * on_reals).item(),
                                                  rel=1e-5)
    # D is trained on the penalty, a^2 E||2x||^2: d(d_loss)/da = E|f|^2 - E|x|^2 + 0.5 * 2a R1.
    logs["d_loss"].backward()
    squares = (fake.square().flatten(1).sum(1).mean() - real.square().flatten(1).sum(1).mean())
    assert critic.a.grad.item() == pytest.approx((squares + on_reals).item(), rel=1e-5)


def test_wgan_gp_config_has_the_papers_hyperparameters(tmp_path):
    """Gulrajani et al., 2017, algorithm 1: lambda = 10, n_critic = 5, Adam alpha = 1e-4,
    beta1 = 0, beta2 = 0.9, a Wasserstein critic without batch norm."""
    gan = build(compose_config(["model=wgan_gp"], tmp_path).model)
    assert (gan.loss, gan.penalty, gan.penalty_weight) == ("wasserstein", "gradient_penalty", 10)
    assert (gan.d_steps, gan.g_steps, gan.label_smoothing) == (5, 1, 0.0)
    assert not uses_batch_statistics(gan.discriminator)  # the penalty is per image
    for optimizer in gan.configure_optimizers():
        assert isinstance(optimizer, torch.optim.Adam)
        (group,) = optimizer.param_groups
        assert (group["lr"], tuple(group["betas"])) == (1e-4, (0.0, 0.9))


# ----- StyleGAN ---------------------------------------------------------------------------------


def tiny_stylegan(**options) -> StyleGANGenerator:
    return StyleGANGenerator(8, 1, 16, mapping_layers=2, max_width=8, min_width=8, **options)


def test_adain_sets_each_channels_mean_and_std_from_the_style():
    torch.manual_seed(0)
    g = tiny_stylegan().eval()
    outputs = []
    for layer in g.layers:
        layer.register_forward_hook(lambda m, args, out: outputs.append((args[1], m, out)))
    means = []
    for z in (torch.randn(3, 8), torch.randn(3, 8)):
        outputs.clear()
        g(z)
        for i, (w, layer, out) in enumerate(outputs):
            assert torch.allclose(out.mean((2, 3)), layer.adain.shift(w), atol=1e-4)
            if i > 0:  # layer 0 normalizes the constant input, which has no variance
                assert torch.allclose(out.std((2, 3), unbiased=False),
                                      layer.adain.scale(w).abs(), rtol=1e-2, atol=1e-4)
        means.append(outputs[-1][2].mean((2, 3)))
    assert not torch.allclose(means[0], means[1], atol=1e-3)  # another w, other statistics


def test_noise_inputs_change_fine_detail_only_when_scaled():
    torch.manual_seed(0)
    g = tiny_stylegan().eval()
    z = torch.randn(2, 8)
    with torch.no_grad():
        assert torch.equal(g(z), g(z))  # the learned noise scales start at zero
        for layer in g.layers[-2:]:  # noise at the finest resolution
            layer.noise.scale.fill_(0.3)
        first, second = g(z), g(z)
    assert not torch.allclose(first, second, atol=1e-4)
    # Fine detail: the images still agree far more with each other than with another w.
    other = g(torch.randn(2, 8)).detach()
    assert (first - second).abs().mean() < 0.5 * (first - other).abs().mean()


def test_stylegan_samples_are_reproducible_from_the_passed_generator(tmp_path):
    gan = build(compose_config(["model=stylegan", *TINY_STYLEGAN], tmp_path).model).eval()
    with torch.no_grad():
        for layer in gan.generator_ema.layers:
            layer.noise.scale.fill_(0.5)

    def sample(seed):
        return gan.sample(3, generator=torch.Generator().manual_seed(seed))

    torch.manual_seed(1)
    first = sample(0)
    torch.manual_seed(2)  # the global RNG does not matter, and is left as it was
    state = torch.get_rng_state()
    assert torch.equal(sample(0), first)
    assert torch.equal(torch.get_rng_state(), state)
    assert not torch.allclose(sample(1), first)


def test_conditional_style_mixing_replaces_the_noise_and_keeps_the_label():
    torch.manual_seed(0)
    network = partial(StyleGANGenerator, channels=1, image_size=16, mapping_layers=2,
                      max_width=8, min_width=8, mixing_prob=1.0)
    g = ConditionalGenerator(network, latent_dim=6, num_classes=3).train()
    codings = []
    g.net.mapping.register_forward_pre_hook(lambda m, args: codings.append(args[0]))
    labels = torch.tensor([0, 2, 1, 2])
    g(torch.randn(4, 6), labels)
    z, z2 = codings
    assert torch.equal(z2[:, 6:], F.one_hot(labels, 3).float())
    assert not torch.allclose(z2[:, :6], z[:, :6])


@pytest.mark.parametrize("mixing_prob", [0.9, 0.3])
def test_style_mixing_mixes_the_share_of_images_mixing_prob_asks_for(mixing_prob):
    """Sec. 3.1: mixing regularization on a given share of the training images (0.9 by
    default), not on all of them."""
    torch.manual_seed(0)
    g = tiny_stylegan(mixing_prob=mixing_prob).train()
    z = torch.randn(4000, 8)
    with torch.no_grad():
        styles, own = g.styles(z), g.mapping(z)
    mixed = ~torch.isclose(styles, own[:, None].expand_as(styles)).all(2).all(1)
    # 4000 draws: the share's standard error is under 0.008.
    assert mixed.float().mean().item() == pytest.approx(mixing_prob, abs=0.03)


def test_truncation_trick_pulls_styles_towards_the_tracked_average_w():
    torch.manual_seed(0)
    g = tiny_stylegan(mixing_prob=0.0, w_avg_beta=0.5).train()
    z1, z2 = torch.randn(5, 8), torch.randn(5, 8)
    g(z1)
    g(z2)
    with torch.no_grad():
        w1, w2 = g.mapping(z1), g.mapping(z2)
    assert torch.allclose(g.w_avg, 0.25 * w1.mean(0) + 0.5 * w2.mean(0), atol=1e-6)
    g.eval()
    w_avg = g.w_avg.clone()
    styles = g.styles(z1, truncation=0.7)
    assert torch.allclose(styles, (w_avg + 0.7 * (w1 - w_avg))[:, None].expand_as(styles),
                          atol=1e-6)
    assert torch.allclose(g.styles(z1, truncation=0.0), w_avg.expand_as(styles))
    assert torch.equal(g.w_avg, w_avg)  # sampling does not move the average
    images = g(torch.randn(4, 8), truncation=0.0)
    assert torch.allclose(images, images[:1].expand_as(images), atol=1e-6)


def test_mapping_network_learns_at_a_hundredth_of_the_rate():
    torch.manual_seed(0)
    g = tiny_stylegan()
    optimizer = torch.optim.Adam(g.parameters(), lr=1e-3, betas=(0.0, 0.99))
    mapping, conv = g.mapping[1], g.layers[1].conv

    def effective(layer):
        return (layer.weight * layer.scale).detach().clone()

    before = [effective(mapping), effective(conv)]
    # Adam's first step moves each stored weight by lr (scaled up: epsilon stays negligible).
    (g(torch.randn(4, 8)).mean() * 1e6).backward()
    optimizer.step()
    mapping_change, conv_change = (
        ((effective(layer) - old).abs().mean() / old.std()).item()
        for layer, old in zip((mapping, conv), before, strict=True))
    assert mapping_change / conv_change == pytest.approx(0.01, rel=0.1)


def test_mapping_network_biases_start_at_their_init_and_learn_at_a_hundredth_of_the_rate():
    """StyleGAN's lr multiplier (0.01 in the mapping network) applies to the biases too:
    the stored bias is bias_init / 0.01 and is used times 0.01, so the effective bias starts
    at bias_init and Adam moves it by 0.01 lr per step."""
    layer = EqualizedLinear(4, 3, lr_multiplier=0.01, bias_init=0.5)
    assert torch.allclose(layer(torch.zeros(1, 4)), torch.full((1, 3), 0.5))
    torch.manual_seed(0)
    g = tiny_stylegan()
    mapping = g.mapping[1]
    zeros = torch.zeros(1, mapping.weight.shape[1])

    def effective_bias():  # the layer's output at a zero input
        return mapping(zeros).detach().clone()

    before = effective_bias()
    optimizer = torch.optim.Adam(g.parameters(), lr=1e-3, betas=(0.0, 0.99))
    # Adam's first step moves each stored bias by lr (scaled up: epsilon stays negligible).
    (g(torch.randn(4, 8)).mean() * 1e6).backward()
    optimizer.step()
    change = (effective_bias() - before).abs()
    assert torch.allclose(change, torch.full_like(change, 1e-3 * 0.01), rtol=0.05), change


def test_generate_truncates_stylegan_samples_and_refuses_other_gans(tmp_path):
    torch.manual_seed(0)
    cfg = OmegaConf.to_container(compose_config(["model=stylegan", *TINY_STYLEGAN], tmp_path),
                                 resolve=True)
    gan, trainer = fit_tiny(["model=stylegan", *TINY_STYLEGAN], tmp_path, max_steps=2,
                            callbacks=[ConfigInCheckpoint(cfg)])
    assert torch.equal(gan.generator_ema.w_avg, gan.generator.w_avg)
    assert gan.generator.w_avg.abs().sum() > 0  # tracked during training
    with torch.no_grad():  # no noise inputs: the samples differ by their styles alone
        for name, parameter in gan.named_parameters():
            if name.endswith("noise.scale"):
                parameter.zero_()
    trainer.save_checkpoint(tmp_path / "stylegan.ckpt")

    def images(*overrides):
        _, npz = generate(tool_config("generate", f"ckpt={tmp_path / 'stylegan.ckpt'}",
                                      "num=16", *overrides))
        return np.load(npz)["images"]

    none, psi_07, psi_0 = images(), images("truncation=0.7"), images("truncation=0.0")
    expected = to_uint8(gan, gan.eval().sample(16, torch.Generator().manual_seed(0),
                                               truncation=0.7))
    assert np.array_equal(psi_07, expected.numpy()) and not np.array_equal(psi_07, none)
    spread = [a.astype(float).std(0).mean() for a in (psi_0, psi_07)]  # over the samples
    assert spread[0] < 0.01 * spread[1]  # psi = 0: every style is the average w
    assert list((tmp_path / "generated").glob("samples_stylegan_step*_seed0_n16_trunc0.7_*.png"))
    with pytest.raises(GenmodelsError, match="needs a StyleGAN generator"):
        build(compose_config(["model=dcgan"], tmp_path).model).sample(2, truncation=0.7)


# ----- the EMA generator, validation ------------------------------------------------------------


def test_ema_generator_samples_with_batch_statistics_of_its_own_weights(tmp_path, monkeypatch):
    torch.manual_seed(0)
    gan = build(compose_config(["model=dcgan", "model.ema_decay=0.5"], tmp_path).model)
    with torch.no_grad():  # the live G moves away from its EMA copy, with other statistics
        for p in gan.generator.parameters():
            p.mul_(1.5).add_(0.1)
        gan.generator.train()(torch.randn(256, 100))  # the live G's statistics
    gan.update_generator_ema()
    gan.eval()
    ema = gan.ema_generator()
    z = torch.randn(1024, 100)
    with torch.no_grad():
        sampled = ema(z)
        saved = copy.deepcopy(ema.state_dict())
        own = ema.train()(z)  # normalized by the EMA network's own batch statistics
        ema.load_state_dict(saved)
        ema.eval()
    assert (sampled - own).abs().mean() < 0.03  # with the live G's statistics: 0.26
    assert torch.equal(gan.sample(4, torch.Generator().manual_seed(0)),
                       ema(torch.randn(4, 100, generator=torch.Generator().manual_seed(0))))
    # Checkpoints keep the EMA copy's own statistics.
    gan.update_generator_ema()
    checkpoint = {"state_dict": {k: v.clone() for k, v in gan.state_dict().items()}}
    # (The base class's finite-weights guard needs a Trainer; it is not under test here.)
    monkeypatch.setattr(GenerativeModel, "on_save_checkpoint", lambda model, checkpoint: None)
    gan.on_save_checkpoint(checkpoint)
    norm = next(name for name, m in ema.named_modules() if isinstance(m, nn.BatchNorm2d))
    assert torch.equal(checkpoint["state_dict"][f"generator_ema.{norm}.running_mean"],
                       ema.get_submodule(norm).running_mean)
    assert not torch.equal(ema.get_submodule(norm).running_mean,
                           gan.generator.get_submodule(norm).running_mean)


def test_validation_measures_the_training_loss_on_the_live_generator():
    gan = toy_gan(loss="wasserstein", penalty="gradient_penalty", penalty_weight=10.0,
                  ema_decay=0.5)
    with torch.no_grad():
        gan.generator_ema.image.copy_(-gan.generator.image)
    loader = toy_batches(n=8, batches=1)
    metrics = toy_trainer().validate(gan, loader, verbose=False)[0]
    real = loader.dataset.tensors[0]
    w = gan.discriminator.weight.detach()

    def score(images):
        return (images * w).flatten(1).sum(1)

    live = torch.full((1, 1, 4, 4), 0.5).triu()
    ema = torch.full((1, 1, 4, 4), -0.5).triu()
    penalty = (w.norm() - 1) ** 2  # a linear critic's gradient norm is |w| everywhere
    assert metrics["val/penalty"] == pytest.approx(penalty.item(), rel=1e-4)
    expected = score(live).mean() - score(real).mean() + 10.0 * penalty
    assert metrics["val/d_loss"] == pytest.approx(expected.item(), rel=1e-4)
    assert metrics["val/g_loss"] == pytest.approx(-score(live).item(), rel=1e-4)
    assert metrics["val/ema_g_loss"] == pytest.approx(-score(ema).item(), rel=1e-4)
