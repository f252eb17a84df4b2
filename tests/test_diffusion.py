"""Diffusion models (model=ddpm): each defining piece pinned by its closed form: the
forward process, the schedules, the parametrisations, the samplers, guidance, the EMA,
the loss; then a tiny model learns digits, and the tools sample a trained run."""

import math

import lightning as L
import numpy as np
import pytest
import torch
from omegaconf import open_dict

from genmodels import latent
from genmodels.config import build
from genmodels.data import DigitsDataModule
from genmodels.errors import GenmodelsError
from genmodels.jobs.generate import generate
from genmodels.jobs.likelihood import main as likelihood_main
from genmodels.jobs.train import train
from genmodels.models import DDPM
from genmodels.nn import UNet
from genmodels.nn.diffusion import (
    NoiseSchedule,
    ddim_step,
    ddpm_step,
    discretized_gaussian_log_likelihood,
    normal_kl,
    posterior_mean_variance,
    sampling_timesteps,
)
from genmodels.nn.unet import ResidualBlock, SelfAttention, timestep_embedding
from genmodels.optim import ema_decay_at

from .conftest import SMALL_DDPM as TINY_UNET
from .conftest import TINY, compose_config
from .test_generate_evaluate import tool_config


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Small convolutions run fastest on one thread of a shared CPU (see test_vae_family)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny_network(num_classes=None, image_size=8, seed=0) -> UNet:
    """A U-Net with random (not zero) output weights, so that its output depends on its
    input, in eval mode (no dropout): a deterministic stand-in for a trained network."""
    torch.manual_seed(seed)
    network = UNet(channels=1, image_size=image_size, widths=[8, 16], num_res_blocks=1,
                   num_classes=num_classes, norm_groups=4)
    for parameter in network.parameters():
        torch.nn.init.normal_(parameter, std=0.1)
    return network.eval()


def tiny_ddpm(**options) -> DDPM:
    options = {"timesteps": 20, "sample_steps": 5, "ema_decay": None, **options}
    network = options.pop("network", None) or tiny_network(options.get("num_classes"))
    return DDPM(network=network, optimizer=None, channels=1, image_size=8,
                value_range=[-1.0, 1.0], **options).eval()


# ----- the forward process and the schedules -----------------------------------------------


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_q_sample_has_the_schedules_mean_and_variance(schedule):
    noise_schedule = NoiseSchedule(schedule, 1000)
    abar = noise_schedule.alphas_cumprod
    t = torch.tensor([0, 100, 500, 999])
    x0 = torch.tensor([0.7, -0.3, 1.0, -1.0]).view(4, 1, 1, 1).expand(4, 1, 100, 100)
    # Exactly, with fixed noise: mean sqrt(abar_t) x0 (noise 0), std sqrt(1 - abar_t).
    mean = noise_schedule.q_sample(x0, t, torch.zeros_like(x0))
    torch.testing.assert_close(mean, abar[t].sqrt().view(4, 1, 1, 1) * x0)
    unit = noise_schedule.q_sample(torch.zeros_like(x0), t, torch.ones_like(x0))
    torch.testing.assert_close(unit, (1 - abar[t]).sqrt().view(4, 1, 1, 1).expand_as(x0))
    # Empirically, over 10,000 draws per timestep.
    torch.manual_seed(0)
    x_t = noise_schedule.q_sample(x0, t, torch.randn_like(x0))
    torch.testing.assert_close(x_t.mean((1, 2, 3)), abar[t].sqrt() * x0[:, 0, 0, 0],
                               atol=0.03, rtol=0)
    torch.testing.assert_close(x_t.var((1, 2, 3)), 1 - abar[t], atol=0.03, rtol=0.03)


def test_linear_betas_run_from_1e4_to_002_scaled_by_1000_over_t():
    for timesteps in (1000, 500, 4000):
        betas = NoiseSchedule("linear", timesteps).betas.double()
        scale = 1000 / timesteps
        assert betas[0].item() == pytest.approx(1e-4 * scale)
        assert betas[-1].item() == pytest.approx(0.02 * scale)
        steps = betas.diff()
        torch.testing.assert_close(steps, steps.mean().expand_as(steps), atol=1e-9, rtol=1e-4)
        torch.testing.assert_close(NoiseSchedule("linear", timesteps).alphas_cumprod.double(),
                                   torch.cumprod(1 - betas, 0), rtol=1e-5, atol=0)


def test_cosine_alphas_cumprod_follow_nichol_and_dhariwals_formula():
    timesteps, s = 1000, 0.008
    schedule = NoiseSchedule("cosine", timesteps)

    def f(t):
        return math.cos((t / timesteps + s) / (1 + s) * math.pi / 2) ** 2

    expected = torch.tensor([f(t) / f(0) for t in range(1, timesteps + 1)])
    capped = schedule.betas >= 0.999 - 1e-6  # beta_t capped at 0.999 (only at the very end)
    assert capped.sum() == 1 and capped[-1]
    torch.testing.assert_close(schedule.alphas_cumprod[:-1], expected[:-1].float(),
                               rtol=1e-4, atol=1e-7)
    assert schedule.alphas_cumprod[-1] == pytest.approx(expected[-2] * 0.001, rel=1e-3)
    assert (schedule.betas.diff() > 0).all()  # more noise per step as t grows


# ----- what the network predicts -----------------------------------------------------------


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
@pytest.mark.parametrize("prediction", ["epsilon", "v"])
def test_epsilon_and_v_recover_x0_and_the_noise_exactly(prediction, schedule):
    noise_schedule = NoiseSchedule(schedule, 1000)
    torch.manual_seed(0)
    x0, noise = torch.rand(6, 1, 5, 5) * 2 - 1, torch.randn(6, 1, 5, 5)
    t = torch.tensor([0, 1, 250, 500, 900, 950])  # x_0 from eps amplifies float error as abar -> 0
    x_t = noise_schedule.q_sample(x0, t, noise)
    abar = noise_schedule.alphas_cumprod[t].view(-1, 1, 1, 1)
    target = noise_schedule.training_target(prediction, x0, noise, t)
    expected = noise if prediction == "epsilon" else abar.sqrt() * noise - (1 - abar).sqrt() * x0
    torch.testing.assert_close(target, expected)
    x0_back = noise_schedule.predicted_x0(prediction, x_t, t, target)
    torch.testing.assert_close(x0_back, x0, atol=1e-4, rtol=0)
    torch.testing.assert_close(noise_schedule.predicted_noise(x_t, t, x0_back), noise,
                               atol=1e-4, rtol=0)


def test_the_training_loss_of_a_network_that_predicts_the_true_noise_is_zero():
    class Oracle(torch.nn.Module):
        """Knows x_0 (all images equal), so it finds the noise in x_t, or v."""

        num_classes = None

        def __init__(self, x0, schedule, prediction):
            super().__init__()
            self.x0, self.schedule, self.prediction = x0, schedule, prediction

        def forward(self, x_t, t):
            noise = self.schedule.predicted_noise(x_t, t, self.x0)
            return self.schedule.training_target(self.prediction, self.x0, noise, t)

    x0 = torch.full((64, 1, 8, 8), 0.5)
    for prediction in ("epsilon", "v"):
        model = tiny_ddpm(timesteps=100, prediction=prediction).train()
        model.network = Oracle(x0, model.schedule, prediction)
        losses = model.losses((x0, torch.zeros(64)))
        assert losses["loss"] < 1e-8, (prediction, losses)
    # and a network that always says 0 has the loss E[eps^2] = 1 on epsilon
    class Zero(torch.nn.Module):
        num_classes = None

        def forward(self, x_t, t):
            return torch.zeros_like(x_t)

    model = tiny_ddpm(timesteps=100, prediction="epsilon", network=Zero())
    loss = model.losses((torch.zeros(256, 1, 8, 8), torch.zeros(256)),
                        torch.Generator().manual_seed(0))
    assert loss["loss"].item() == pytest.approx(1.0, abs=0.02)
    assert {"loss_t0_24", "loss_t25_49", "loss_t50_74", "loss_t75_99"} <= set(loss)


@pytest.mark.parametrize("prediction", ["epsilon", "v"])
def test_min_snr_weighting_makes_each_loss_min_snr_gamma_times_its_x0_error(prediction):
    """Hang et al. (2023), eq. 8: whatever the network predicts, the weighted loss of an
    example is min(SNR_t, gamma) ||x_0 - x0_hat||^2 (mean over pixels), x0_hat the x_0 its
    output implies; without gamma it is the simple loss, SNR (eps) or SNR + 1 (v) times."""
    model = tiny_ddpm(timesteps=100, prediction=prediction, min_snr_gamma=5.0)
    torch.manual_seed(0)
    x0, noise = torch.rand(8, 1, 4, 4) * 2 - 1, torch.randn(8, 1, 4, 4)
    t = torch.tensor([0, 5, 20, 40, 50, 60, 80, 99])  # SNR from ~1e4 down to ~1e-5
    x_t = model.schedule.q_sample(x0, t, noise)
    target = model.schedule.training_target(prediction, x0, noise, t)
    output = torch.randn(8, 1, 4, 4)
    network = lambda x, steps: output  # noqa: E731
    x0_error = (model.schedule.predicted_x0(prediction, x_t, t, output) - x0).square()
    snr = model.schedule.snr(t)
    assert snr.max() > 5 > snr.min()  # both sides of gamma
    torch.testing.assert_close(model.per_example_loss(network, x_t, t, None, target),
                               snr.clamp(max=5) * x0_error.flatten(1).mean(1), rtol=1e-3,
                               atol=1e-6)
    model.min_snr_gamma = None
    torch.testing.assert_close(model.per_example_loss(network, x_t, t, None, target),
                               (output - target).square().flatten(1).mean(1))


def test_the_loss_is_logged_per_range_of_timesteps():
    model = tiny_ddpm(timesteps=8, loss_buckets=4)
    per_example = torch.tensor([1.0, 2.0, 3.0, 10.0, 20.0, 30.0])
    t = torch.tensor([0, 1, 1, 4, 5, 7])
    assert model.bucket_losses(per_example, t) == {
        "loss_t0_1": pytest.approx(2.0), "loss_t4_5": pytest.approx(15.0),
        "loss_t6_7": pytest.approx(30.0)}  # t 2..3: no example, no entry


# ----- the samplers ------------------------------------------------------------------------


def test_posterior_is_hos_equation_7():
    schedule = NoiseSchedule("linear", 1000)
    betas, abar = schedule.betas.double(), schedule.alphas_cumprod.double()
    t = 400
    x0, x_t = torch.tensor([0.3]).double(), torch.tensor([-1.2]).double()
    mean, variance = posterior_mean_variance(x0, x_t, abar[t], abar[t - 1])
    expected_mean = (abar[t - 1].sqrt() * betas[t] / (1 - abar[t]) * x0
                     + (1 - betas[t]).sqrt() * (1 - abar[t - 1]) / (1 - abar[t]) * x_t)
    torch.testing.assert_close(mean, expected_mean)
    torch.testing.assert_close(variance, (1 - abar[t - 1]) / (1 - abar[t]) * betas[t])


def test_ddim_with_eta_1_takes_ddpms_ancestral_step_and_with_eta_0_no_noise():
    schedule = NoiseSchedule("cosine", 1000)
    torch.manual_seed(0)
    x0, eps, z = (torch.rand(3, 1, 4, 4, dtype=torch.float64) * 2 - 1,
                  torch.randn(3, 1, 4, 4, dtype=torch.float64),
                  torch.randn(3, 1, 4, 4, dtype=torch.float64))
    t = torch.tensor([999, 500, 1])
    abar_t, abar_prev = schedule.abar(t).double(), schedule.abar(t - 1).double()
    x_t = abar_t.sqrt() * x0 + (1 - abar_t).sqrt() * eps
    mean, variance = posterior_mean_variance(x0, x_t, abar_t, abar_prev)
    torch.testing.assert_close(ddim_step(x_t, x0, eps, abar_t, abar_prev, 1.0, z),
                               mean + variance.sqrt() * z)
    torch.testing.assert_close(ddpm_step(x_t, x0, abar_t, abar_prev, z),
                               mean + variance.sqrt() * z)
    # eta = 0: the deterministic update sqrt(abar_prev) x_0 + sqrt(1 - abar_prev) eps
    deterministic = abar_prev.sqrt() * x0 + (1 - abar_prev).sqrt() * eps
    for noise in (z, torch.randn_like(z)):
        torch.testing.assert_close(ddim_step(x_t, x0, eps, abar_t, abar_prev, 0.0, noise),
                                   deterministic)


@pytest.mark.parametrize("steps, atol", [(20, 1e-5), (7, 1e-4)])
def test_sampling_with_ddim_eta_1_is_ddpm_ancestral_sampling(steps, atol):
    """In all T steps, and respaced to fewer (experiment=ddpm_mnist samples so; the
    respaced steps' larger betas leave a float32 round-off of about 2e-5)."""
    model = tiny_ddpm(timesteps=20)
    ddpm = model.sample(4, torch.Generator().manual_seed(1), sampler="ddpm", steps=steps)
    ddim = model.sample(4, torch.Generator().manual_seed(1), sampler="ddim", eta=1.0,
                        steps=steps)
    torch.testing.assert_close(ddim, ddpm, atol=atol, rtol=0)
    assert ddpm.min() >= -1 and ddpm.max() <= 1 and ddpm.shape == (4, 1, 8, 8)


def test_ddim_with_eta_0_is_deterministic_given_the_starting_noise():
    model = tiny_ddpm(timesteps=20)
    first = model.sample(4, torch.Generator().manual_seed(5), eta=0.0, steps=7)
    torch.manual_seed(123)  # the global RNG plays no part
    again = model.sample(4, torch.Generator().manual_seed(5), eta=0.0, steps=7)
    torch.testing.assert_close(first, again, atol=0, rtol=0)
    assert not torch.equal(first, model.sample(4, torch.Generator().manual_seed(6), steps=7))
    noisy = model.sample(4, torch.Generator().manual_seed(5), eta=1.0, steps=7)
    assert not torch.allclose(first, noisy)



class ConstantNoise(torch.nn.Module):
    """A 'network' that says the noise is 0.3 everywhere, whatever x and t: DDIM's steps
    then invert each other exactly."""

    def forward(self, x, t, labels=None):
        return torch.full_like(x, 0.3)


def test_ddim_inversion_and_decode_are_each_others_inverse():
    torch.manual_seed(0)
    model = tiny_ddpm(network=ConstantNoise(), clip_x0=False, sample_steps=7)
    images = torch.rand(3, 1, 8, 8) * 2 - 1
    codings = model.encode(images)
    assert codings.shape == (3, model.latent_dim) == (3, 64)
    torch.testing.assert_close(model.decode(codings), images.clamp(-1, 1), atol=1e-5, rtol=0)
    # x_T: the images scaled by sqrt(abar_T), plus sqrt(1 - abar_T) times the noise
    abar = model.schedule.alphas_cumprod[-1]
    torch.testing.assert_close(codings.view(3, 1, 8, 8),
                               abar.sqrt() * images + (1 - abar).sqrt() * 0.3)
    # so the latent tools interpolate between two images of a diffusion model
    path = latent.interpolate(model, images[0], images[1], steps=4, method="slerp")
    torch.testing.assert_close(path[[0, -1]], images[:2], atol=1e-5, rtol=0)
    # and a trained-like network's inversion is deterministic
    model = tiny_ddpm(sample_steps=20, timesteps=20)
    first = model.encode(images)
    torch.testing.assert_close(model.encode(images), first, atol=0, rtol=0)

def test_the_denoising_chain_runs_from_the_noise_to_the_sample():
    """TensorBoard's denoising_chain grid: each row starts at the x_T that `sample` starts
    from and ends at the image it returns; between them, the sampler's intermediate x_t."""
    model = tiny_ddpm(sample_steps=6)
    chain = model.denoising_chain(rows=3, columns=4, generator=torch.Generator().manual_seed(2))
    rows = chain.view(3, 4, 1, 8, 8)
    noise = torch.randn(3, 1, 8, 8, generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(rows[:, 0], noise.clamp(-1, 1))
    torch.testing.assert_close(rows[:, -1], model.sample(3, torch.Generator().manual_seed(2)))
    # Columns 1 and 2 are x_t after steps 2 and 4 of 6 (linspace(0, 6, 4) rounded).
    states = [noise]
    model.denoise(noise, model.network, None, model.sampling_settings(
        defaults=model.sampling_defaults), None, states)
    torch.testing.assert_close(rows[:, 1], states[2].clamp(-1, 1))
    torch.testing.assert_close(rows[:, 2], states[4].clamp(-1, 1))


def test_sampling_timesteps_run_evenly_from_t_minus_1_to_0():
    assert sampling_timesteps(1000, 5) == [999, 749, 500, 250, 0]
    assert sampling_timesteps(10, 10) == list(range(9, -1, -1))
    assert sampling_timesteps(10, 1) == [9]


def test_classifier_free_guidance_mixes_conditional_and_unconditional_outputs():
    model = tiny_ddpm(num_classes=3)
    network = model.network
    torch.manual_seed(0)
    x, t, labels = torch.randn(3, 1, 8, 8), torch.tensor([3, 10, 19]), torch.tensor([0, 1, 2])
    conditional = network(x, t, labels)
    unconditional = network(x, t, torch.full_like(labels, 3))  # the null label
    torch.testing.assert_close(model.guided_output(network, x, t, labels, 0.0), conditional)
    torch.testing.assert_close(model.guided_output(network, x, t, labels, 2.0),
                               3 * conditional - 2 * unconditional, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(model.guided_output(network, x, t, labels, -1.0), unconditional,
                               atol=1e-5, rtol=1e-5)
    assert not torch.allclose(conditional, unconditional)
    # sampling: w = 0 is the conditional model, and the labels matter
    zero = model.sample(3, torch.Generator().manual_seed(0), labels=[0, 1, 2], guidance=0.0)
    guided = model.sample(3, torch.Generator().manual_seed(0), labels=[0, 1, 2], guidance=3.0)
    other = model.sample(3, torch.Generator().manual_seed(0), labels=[2, 2, 2], guidance=0.0)
    assert not torch.allclose(zero, guided) and not torch.allclose(zero, other)


def test_label_dropout_replaces_labels_by_the_null_label_at_its_rate():
    model = tiny_ddpm(num_classes=10, label_dropout=0.25)
    labels = torch.arange(10).repeat(1000)
    dropped = model.drop_labels(labels, torch.Generator().manual_seed(0))
    is_null = dropped == 10
    assert is_null.float().mean().item() == pytest.approx(0.25, abs=0.015)
    assert torch.equal(dropped[~is_null], labels[~is_null])
    assert tiny_ddpm(num_classes=10).label_dropout == 0.1  # the default when conditional


# ----- the EMA -------------------------------------------------------------------------------


def test_ema_decay_warms_up_as_1_plus_n_over_10_plus_n():
    assert ema_decay_at(0.9999, 0) == pytest.approx(0.1)
    assert ema_decay_at(0.9999, 90) == pytest.approx(0.91)
    assert ema_decay_at(0.9999, 10**6) == 0.9999
    assert ema_decay_at(0.2, 1) == pytest.approx(2 / 11) and ema_decay_at(0.2, 2) == 0.2


class RecordWeights(L.Callback):
    def __init__(self):
        self.weights = []

    def on_train_start(self, trainer, module):
        self.weights.append([p.detach().clone() for p in module.network.parameters()])

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        self.weights.append([p.detach().clone() for p in module.network.parameters()])


def test_the_ema_follows_each_optimizer_step_with_its_warm_up(tmp_path):
    cfg = compose_config(["model=ddpm", *TINY_UNET, "model.ema_decay=0.25",
                          "dataset.batch_size=8", "dataset.image_size=8"], tmp_path)
    model, recorder = build(cfg.model), RecordWeights()
    L.Trainer(max_steps=4, limit_val_batches=0, logger=False, callbacks=[recorder],
              enable_checkpointing=False, enable_progress_bar=False,
              enable_model_summary=False, accelerator="cpu").fit(model, build(cfg.dataset))
    start = expected = recorder.weights[0]
    for step, weights in enumerate(recorder.weights[1:]):  # decay 0.1, 2/11, 0.25, 0.25
        decay = min(0.25, (1 + step) / (10 + step))
        expected = [decay * e + (1 - decay) * w for e, w in zip(expected, weights, strict=True)]
    # How far each weight moved from the start, which the decays set (steps are ~1e-3).
    for ema, want, first in zip(model.network_ema.parameters(), expected, start, strict=True):
        torch.testing.assert_close(ema - first, want - first, rtol=1e-3, atol=1e-7)
    assert not torch.equal(next(model.network_ema.parameters()), recorder.weights[-1][0])


def test_sample_uses_the_ema_weights_unless_told_otherwise():
    model = tiny_ddpm(ema_decay=0.999)
    with torch.no_grad():
        for parameter in model.network_ema.parameters():
            parameter.mul_(0.5)
    seeded = [torch.Generator().manual_seed(0) for _ in range(3)]
    default, ema, live = (model.sample(2, seeded[0]), model.sample(2, seeded[1], ema=True),
                          model.sample(2, seeded[2], ema=False))
    assert torch.equal(default, ema) and not torch.allclose(ema, live)


# ----- the network -----------------------------------------------------------------------------


def test_timestep_embedding_is_the_transformers_sinusoid():
    embedding = timestep_embedding(torch.tensor([0, 7]), 6)
    frequencies = [10000 ** (-k / 3) for k in range(3)]
    expected = [[math.sin(t * f) for f in frequencies] + [math.cos(t * f) for f in frequencies]
                for t in (0, 7)]
    torch.testing.assert_close(embedding, torch.tensor(expected))


def test_every_residual_block_of_the_unet_gets_the_timestep():
    network = tiny_network()
    blocks = [m for m in network.modules() if isinstance(m, ResidualBlock)]
    outputs = {block: [] for block in blocks}
    for block in blocks:
        block.register_forward_hook(lambda module, args, out: outputs[module].append(out))
    x = torch.randn(1, 1, 8, 8)
    network(x, torch.tensor([0]))
    network(x, torch.tensor([500]))
    # the first block sees the same input at both t: only the embedding tells them apart
    assert all(not torch.allclose(*outputs[block]) for block in blocks)


def test_unet_keeps_any_image_size_and_puts_attention_where_asked():
    for size, sides in ((28, [28, 14, 7]), (32, [32, 16, 8]), (15, [15, 8, 4])):
        network = UNet(channels=3, image_size=size, widths=[8, 8, 16], num_res_blocks=1,
                       norm_groups=4)
        assert network.sides == sides
        out = network(torch.randn(2, 3, size, size), torch.tensor([0, 999]))
        assert out.shape == (2, 3, size, size)
    # null: the lowest level (1 block down, 2 up) plus the middle's
    lowest = UNet(channels=1, image_size=28, widths=[8, 16, 16], num_res_blocks=1,
                  norm_groups=4)
    assert sum(isinstance(m, SelfAttention) for m in lowest.modules()) == 1 + 1 + 2
    both = UNet(channels=1, image_size=28, widths=[8, 16, 16], num_res_blocks=2,
                attention_resolutions=[14, 7], norm_groups=4)
    assert sum(isinstance(m, SelfAttention) for m in both.modules()) == 1 + 2 * (2 + 3)
    none = UNet(channels=1, image_size=28, widths=[8, 16], attention_resolutions=[],
                norm_groups=4)
    assert sum(isinstance(m, SelfAttention) for m in none.modules()) == 1


def test_a_conditional_unet_embeds_labels_and_the_null_label():
    network = tiny_network(num_classes=10)
    x, t = torch.randn(2, 1, 8, 8), torch.tensor([5, 5])
    outputs = [network(x, t, torch.tensor([label, label])) for label in (0, 3, 10)]
    assert not torch.allclose(outputs[0], outputs[1])
    assert not torch.allclose(outputs[0], outputs[2])
    with pytest.raises(GenmodelsError, match="give labels"):
        network(x, t)


# ----- learning, and the tools -------------------------------------------------------------


def test_a_tiny_ddpm_learns_digits_in_a_few_steps(tmp_path):
    cfg = compose_config(["model=ddpm", *TINY_UNET, "model.timesteps=100",
                          "dataset.image_size=16"], tmp_path)
    model = build(cfg.model).train()
    datamodule = DigitsDataModule(image_size=16, value_range=[-1.0, 1.0])
    datamodule.setup()
    images = datamodule.scale(datamodule.splits["train"][0][:256])
    batch = (images, torch.zeros(len(images)))
    optimizer = torch.optim.Adam(model.network.parameters(), lr=2e-3)
    model.eval()
    before = model.losses(batch, torch.Generator().manual_seed(0))["loss"].item()
    model.train()
    torch.manual_seed(0)
    for step in range(40):
        part = (images[step % 8 * 32:][:32], torch.zeros(32))
        loss = model.losses(part)["loss"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    after = model.losses(batch, torch.Generator().manual_seed(0))["loss"].item()
    assert before == pytest.approx(1.0, abs=0.1)  # zero-initialized output: E[eps^2]
    assert after < 0.5 * before, (before, after)


class RecordUNetDtypes(L.Callback):
    """The dtype of the U-Net's output in training steps, and the weights before and after."""

    dtypes: set = set()
    weights: list = []

    def on_train_start(self, trainer, pl_module):
        RecordUNetDtypes.dtypes = set()
        RecordUNetDtypes.weights = [{n: p.detach().clone()
                                     for n, p in pl_module.state_dict().items()}]
        pl_module.network.register_forward_hook(
            lambda module, inputs, output: RecordUNetDtypes.dtypes.add(output.dtype)
            if module.training else None)

    def on_train_end(self, trainer, pl_module):
        RecordUNetDtypes.weights.append({n: p.detach().clone()
                                         for n, p in pl_module.state_dict().items()})


def test_ddpm_trains_under_bf16_mixed_precision(tmp_path):
    cfg = compose_config(["model=ddpm", *TINY_UNET, *TINY, "trainer.precision=bf16-mixed",
                          "trainer.max_epochs=1", "trainer.limit_train_batches=3",
                          "trainer.limit_val_batches=1", "callbacks.image_grids=null",
                          "logger=csv"], tmp_path)
    with open_dict(cfg):
        cfg.callbacks.record = {"_target_": f"{__name__}.RecordUNetDtypes"}
    metrics = train(cfg)
    assert math.isfinite(metrics["train/loss_epoch"]) and math.isfinite(metrics["val/ema_loss"])
    assert RecordUNetDtypes.dtypes == {torch.bfloat16}  # autocast ran the U-Net in bf16 ...
    before, after = RecordUNetDtypes.weights
    for prefix in ("network.", "network_ema."):  # ... on float32 weights that trained
        names = [n for n in after if n.startswith(prefix) and after[n].is_floating_point()]
        assert names and all(after[n].dtype == torch.float32 for n in names)
        assert any(not torch.equal(before[n], after[n]) for n in names), prefix


def test_train_draws_sample_grids_and_generate_samples_the_run(tmp_path):
    run_dir = tmp_path / "ddpm"
    cfg = compose_config(["model=ddpm", *TINY_UNET, *TINY, "trainer.max_epochs=1",
                          "trainer.limit_train_batches=2", "trainer.limit_val_batches=1",
                          "model.num_classes=10", "callbacks.image_grids.num_samples=8"],
                         run_dir)
    train(cfg)
    assert (run_dir / "images" / "samples_epoch0000.png").exists()  # one row per class
    assert (run_dir / "images" / "denoising_chain_epoch0000.png").exists()
    _, npz = generate(tool_config("generate", f"run={run_dir}", "num=6", "labels=[1,7]",
                                  "sampler=ddpm", "sample_steps=3", "guidance=2.0"))
    with np.load(npz) as saved:
        assert saved["images"].shape == (6, 1, 28, 28) and saved["images"].dtype == np.uint8
        assert saved["labels"].tolist() == [1, 7, 1, 7, 1, 7]
    _, ddim_npz = generate(tool_config("generate", f"run={run_dir}", "num=6", "labels=[1,7]",
                                       "sample_steps=3", "guidance=2.0"))
    with np.load(ddim_npz) as saved:
        assert not np.array_equal(saved["images"], np.load(npz)["images"])
    with pytest.raises(GenmodelsError, match="must be a whole number from 1 to "
                                             "model.timesteps=1000, got 5000"):
        generate(tool_config("generate", f"run={run_dir}", "num=2", "sample_steps=5000"))


# ----- the variational bound ----------------------------------------------------------------


def test_normal_kl_and_the_discretized_decoder_are_their_closed_forms():
    mean1, var1, mean2, var2 = (torch.tensor([0.3, -1.0]), torch.tensor([0.5, 2.0]),
                                torch.tensor([0.0, 0.5]), torch.tensor([1.0, 0.1]))
    expected = torch.distributions.kl_divergence(torch.distributions.Normal(mean1, var1.sqrt()),
                                                 torch.distributions.Normal(mean2, var2.sqrt()))
    torch.testing.assert_close(normal_kl(mean1, var1, mean2, var2), expected)
    # The 256 values of 8-bit data in [-1, 1] have probabilities summing to 1 ...
    values = torch.arange(256, dtype=torch.float64) / 255 * 2 - 1
    for mean, std in ((0.0, 0.5), (0.9, 0.01), (-1.2, 0.3)):
        log_p = discretized_gaussian_log_likelihood(values, torch.tensor(mean), torch.tensor(std))
        assert log_p.exp().sum().item() == pytest.approx(1.0, abs=1e-9)
    # ... each the normal's mass over its bin, the edge bins reaching to infinity.
    normal = torch.distributions.Normal(torch.tensor(0.2, dtype=torch.float64), 0.4)
    inner = values[100]
    assert log_p is not None and discretized_gaussian_log_likelihood(
        inner, torch.tensor(0.2), torch.tensor(0.4)).exp().item() == pytest.approx(
        (normal.cdf(inner + 1 / 255) - normal.cdf(inner - 1 / 255)).item())
    assert discretized_gaussian_log_likelihood(
        torch.tensor(1.0), torch.tensor(0.2), torch.tensor(0.4)).exp().item() == pytest.approx(
        1 - normal.cdf(torch.tensor(1 - 1 / 255, dtype=torch.float64)).item())


def test_the_bound_of_a_network_that_knows_x0_is_its_prior_and_decoder_terms():
    """Data = one image x0; a network that predicts the true noise makes every KL of the
    diffusion 0, leaving L_T = KL(N(sqrt(abar_T) x0, 1 - abar_T) || N(0, 1)) and the decoder's
    -log of N(x0, beta tilde_2)'s mass on x0's bin, per pixel value."""
    values = torch.tensor([0, 3, 128, 200, 255]).repeat(13)[:64]
    x0 = (values.float() / 255 * 2 - 1).view(1, 1, 8, 8)

    class Oracle(torch.nn.Module):
        num_classes = None

        def __init__(self, schedule):
            super().__init__()
            self.schedule = schedule

        def forward(self, x_t, t):
            return self.schedule.predicted_noise(x_t, t, x0.double()).float()

    model = tiny_ddpm(timesteps=50, schedule="linear")
    model.network = Oracle(model.schedule)
    bound = model.variational_bound(x0, torch.Generator().manual_seed(0))
    abar = model.schedule.alphas_cumprod.double()
    prior = torch.distributions.kl_divergence(
        torch.distributions.Normal(abar[-1].sqrt() * x0.double(), (1 - abar[-1]).sqrt()),
        torch.distributions.Normal(0.0, 1.0)).sum()
    std = ((1 - abar[0]) / (1 - abar[1]) * (1 - abar[1] / abar[0])).sqrt()
    normal, x = torch.distributions.Normal(x0.double(), std), x0.double()
    upper = torch.where(x > 1 - 1e-6, 1.0, normal.cdf(x + 1 / 255))
    lower = torch.where(x < -1 + 1e-6, 0.0, normal.cdf(x - 1 / 255))
    decoder = -(upper - lower).log().sum()
    assert bound["diffusion"].item() == pytest.approx(0.0, abs=1e-3)
    assert bound["prior"].item() == pytest.approx(prior.item(), rel=1e-4)
    assert bound["decoder"].item() == pytest.approx(decoder.item(), rel=1e-4)
    assert bound["total"].item() == pytest.approx((prior + decoder).item(), rel=1e-3)


def test_each_kl_of_the_bound_is_between_the_posterior_and_the_samplers_step():
    model = tiny_ddpm(timesteps=20, schedule="cosine")
    torch.manual_seed(0)
    x0, noise, t = torch.rand(2, 1, 8, 8) * 2 - 1, torch.randn(2, 1, 8, 8), 7
    t_batch = torch.full((2,), t)
    x_t = model.schedule.q_sample(x0, t_batch, noise)
    predicted = model.schedule.predicted_x0("epsilon", x_t, t_batch,
                                            model.network(x_t, t_batch)).clamp(-1, 1)
    abar = model.schedule.alphas_cumprod.double()
    beta = 1 - abar[t] / abar[t - 1]
    variance = (1 - abar[t - 1]) / (1 - abar[t]) * beta

    def mean(x_start):
        return (abar[t - 1].sqrt() * beta / (1 - abar[t]) * x_start.double()
                + (1 - beta).sqrt() * (1 - abar[t - 1]) / (1 - abar[t]) * x_t.double())

    expected = torch.distributions.kl_divergence(
        torch.distributions.Normal(mean(x0), variance.sqrt()),
        torch.distributions.Normal(mean(predicted), variance.sqrt())).flatten(1).sum(1)
    torch.testing.assert_close(model.bound_term(model.network, x0, t, noise, None),
                               expected.float(), rtol=1e-4, atol=1e-4)
    # The diffusion part of the bound sums the terms of t = 1 .. T-1 (the papers' L_1 ..
    # L_{T-1}), each once, at fresh noise: here the same draws, replayed.
    generator = torch.Generator().manual_seed(3)
    draws = torch.Generator().manual_seed(3)
    terms = [model.bound_term(model.network, x0, step, torch.randn(x0.shape, generator=draws),
                              None) for step in range(1, 20)]
    torch.testing.assert_close(model.variational_bound(x0, generator)["diffusion"],
                               sum(terms), rtol=1e-5, atol=1e-5)


def test_the_likelihood_job_prints_a_ddpm_runs_bound_in_bits_per_dim(tmp_path, capsys):
    run_dir = tmp_path / "ddpm"
    train(compose_config(["model=ddpm", *TINY_UNET, *TINY, "model.timesteps=30",
                          "trainer.max_epochs=1", "trainer.limit_train_batches=2",
                          "trainer.limit_val_batches=1"], run_dir))
    likelihood_main([str(run_dir), "--split", "test", "--limit", "6"])
    printed = capsys.readouterr().out
    assert printed.startswith("test: 6 images, variational bound "), printed
    nats = float(printed.split("variational bound ")[1].split()[0])
    bits = float(printed.split("nats per image, ")[1].split()[0])
    assert bits == pytest.approx(nats / (28 * 28 * math.log(2)), rel=1e-3)
    assert 0 < bits < 10


# ----- refusals ----------------------------------------------------------------------------


@pytest.mark.parametrize(("overrides", "message"), [
    (["model.schedule=quadratic"],
     "Unknown model.schedule 'quadratic'; valid choices: linear, cosine."),
    (["model.prediction=x0"], "Unknown model.prediction 'x0'; valid choices: epsilon, v."),
    (["model.sampler=euler"], "Unknown sampler 'euler'; valid choices: ddim, ddpm."),
    (["model.sample_steps=0"],
     "sampling steps .* must be a whole number from 1 to model.timesteps=1000"),
    (["model.sample_steps=1001"], "must be a whole number from 1 to model.timesteps"),
    (["model.timesteps=1"], "model.timesteps must be a whole number of at least 2"),
    (["model.guidance=1.0"], "guidance=1.0 needs a class-conditional model"),
    (["model.value_range=[0.0,1.0]"], r"set model.value_range=\[-1.0,1.0\]"),
    (["model.ema_decay=1.0"], r"model.ema_decay must be in \(0, 1\) or null"),
    (["model.label_dropout=0.1"], "label_dropout must be in"),
    (["model.min_snr_gamma=0"], r"min_snr_gamma must be a positive number \(5 in Hang"),
    (["model.network.attention_resolutions=[5]"],
     r"no level has side \[5\]; this U-Net's levels have sides \[28, 14, 7\]"),
    (["model.network.widths=[10,20]"], "must be divisible by model.network.norm_groups=4"),
    (["model.network.widths=[4,8]"], "into groups of at least 2 channels"),
    (["model.num_classes=10", "model.network.num_classes=null"],
     "model.num_classes=10 but the network's num_classes is None"),
])
def test_bad_options_are_refused_naming_the_valid_choices(overrides, message, tmp_path):
    cfg = compose_config(["model=ddpm", *overrides], tmp_path)
    with pytest.raises(GenmodelsError, match=message):
        build(cfg.model)


def test_bad_sampling_arguments_are_refused():
    model = tiny_ddpm()
    for options, message in (({"sampler": "ancestral"}, "valid choices: ddim, ddpm"),
                             ({"steps": 21}, "from 1 to model.timesteps=20, got 21"),
                             ({"eta": -0.5}, "eta must be a number of at least 0"),
                             ({"sampler": "ddpm", "eta": 0.5}, "eta=0.5 applies to sampler=ddim"),
                             ({"guidance": 2.0}, "needs a class-conditional model"),
                             ({"labels": [1, 2]}, "this DDPM is not conditional"),
                             ({"ema": True}, "keeps an EMA of its weights")):
        with pytest.raises(GenmodelsError, match=message):
            model.sample(2, **options)
    with pytest.raises(GenmodelsError, match=r"labels must be one class index or 2 of them, "
                                             r"in \[0, 3\)"):
        tiny_ddpm(num_classes=3).sample(2, labels=[0, 3])

