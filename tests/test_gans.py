"""The GAN family: every model trains with only its own network changing in each phase,
max_steps counts generator steps, and the tricks do what their papers say."""

import math
from types import SimpleNamespace

import lightning as L
import pytest
import torch
from omegaconf import OmegaConf
from torch import nn
from torch.nn.utils import parametrize
from torchvision.io import read_image

from genmodels.callbacks import ImageGrids
from genmodels.config import build
from genmodels.engine import essential_callbacks
from genmodels.errors import GenmodelsError
from genmodels.nn import (
    MinibatchDiscrimination,
    MinibatchStdDev,
)
from genmodels.nn.gan_layers import ReplayBuffer
from genmodels.nn.gan_losses import discriminator_loss, generator_loss, gradient_penalty, r1_penalty
from genmodels.nn.progan import GrowthSchedule, ProGANDiscriminator, ProGANGenerator
from genmodels.nn.stylegan import StyleGANGenerator

from .conftest import compose_config

TINY_PROGAN = ["model.generator.max_width=16", "model.generator.min_width=8",
               "model.latent_dim=16", "model.growth.fade_images=32",
               "model.growth.stable_images=32"]
TINY_STYLEGAN = ["model.generator.max_width=16", "model.generator.min_width=8",
                 "model.generator.mapping_layers=2", "model.latent_dim=16"]
VARIANTS = {
    "gan": [],
    "gan_upsample": ["model.generator.widths=[16,16]", "model.discriminator.widths=[16,16]"],
    "dcgan64": ["dataset.image_size=32", "model.generator.widths=[32,16,8,8]",
                "model.discriminator.widths=[8,8,16,32]"],
    "cgan": ["model.generator.network.widths=[16,8]",
             "model.discriminator.network.widths=[8,16]"],
    "wgan_gp": ["trainer.precision=bf16-mixed", "model.generator.widths=[16,8]",
                "model.discriminator.widths=[8,16]"],
    "progan": TINY_PROGAN,
    "stylegan": TINY_STYLEGAN,
    # Every switchable trick at once, on the DCGAN networks.
    "dcgan": ["model.loss=least_squares", "model.label_smoothing=0.1", "model.penalty=r1",
              "model.penalty_weight=1.0", "model.replay_capacity=64", "model.spectral_norm=true",
              "model.ema_decay=0.9", "model.g_steps=2",
              "+model.discriminator.minibatch_stddev=true",
              "+model.discriminator.minibatch_kernels=8"],
}


class RecordSteps(L.Callback):
    """For every optimizer step: which network it belonged to, and whether D's and G's
    weights changed in it; G's weights after each of its steps, and the EMA copy's first."""

    def __init__(self):
        self.steps, self.g_weights, self.ema_start = [], [], None

    def on_train_start(self, trainer, gan):
        def weights():
            return ([p.detach().clone() for p in gan.discriminator.parameters()],
                    [p.detach().clone() for p in gan.generator.parameters()])

        def changed(before, after):
            return any(not torch.equal(a, b) for a, b in zip(before, after, strict=True))

        if gan.generator_ema is not None:
            self.ema_start = [p.detach().clone() for p in gan.generator_ema.parameters()]
        for name, optimizer in zip(("D", "G"), trainer.optimizers, strict=True):
            def pre(*args, name=name):
                self.before = weights()

            def post(*args, name=name):
                (d0, g0), (d1, g1) = self.before, weights()
                self.steps.append((name, changed(d0, d1), changed(g0, g1)))
                if name == "G":
                    self.g_weights.append(g1)

            optimizer.register_step_pre_hook(pre)
            optimizer.register_step_post_hook(post)


def fit_tiny(overrides, tmp_path, max_steps=2, callbacks=()):
    cfg = compose_config(["dataset.batch_size=16", *overrides], tmp_path)
    gan = build(cfg.model)
    trainer = L.Trainer(max_steps=max_steps, limit_val_batches=0, logger=False,
                        callbacks=[*essential_callbacks(), *callbacks], enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False,
                        accelerator="cpu", precision=cfg.trainer.precision,
                        log_every_n_steps=1)
    trainer.fit(gan, build(cfg.dataset))
    return gan, trainer


@pytest.mark.parametrize("variant", VARIANTS)
def test_each_gan_trains_with_phases_that_touch_only_their_network(variant, tmp_path):
    recorder = RecordSteps()
    gan, trainer = fit_tiny([f"model={variant}", *VARIANTS[variant]], tmp_path,
                            callbacks=[recorder])
    # trainer.max_steps=2 means two generator steps, however many D steps each needs.
    d_steps = [s for s in recorder.steps if s[0] == "D"]
    g_steps = [s for s in recorder.steps if s[0] == "G"]
    assert len(g_steps) == 2 and len(d_steps) == 2 * gan.d_steps // gan.g_steps
    assert gan.generator_steps == 2 and trainer.max_steps == 2
    assert all(d_changed and not g_changed for _, d_changed, g_changed in d_steps)
    assert all(g_changed and not d_changed for _, d_changed, g_changed in g_steps)
    assert all(math.isfinite(v) for v in trainer.callback_metrics.values())
    assert {"train/d_loss_step", "train/g_loss_step", "train/d_real_step", "train/d_fake_step",
            "train/d_grad_norm_step", "train/g_grad_norm_step"} <= set(trainer.callback_metrics)
    images = gan.eval().sample(3)
    channels, size = (1, 32) if variant == "dcgan64" else (1, 28)
    assert images.shape == (3, channels, size, size) and torch.isfinite(images).all()
    if variant == "dcgan":
        check_every_trick_acted(gan, trainer, recorder)


def check_every_trick_acted(gan, trainer, recorder):
    """The dcgan variant's tricks each did their work, not only let training run."""
    # R1 was added to D's loss: the squared input gradient of a live D is positive.
    assert trainer.callback_metrics["train/penalty_step"] > 0
    # Replay: the one D step (2 G steps of 2 per D step) stored its 16 fakes.
    assert gan.replay.filled == 16 and torch.isfinite(gan.replay.images[:16]).all()
    # Spectral norm on every dense and conv layer of D, its estimate of sigma trained.
    layers = [m for m in gan.discriminator.modules() if isinstance(m, nn.Linear | nn.Conv2d)]
    assert len(layers) >= 3
    assert all(parametrize.is_parametrized(layer, "weight") for layer in layers)
    # The minibatch layers are in D, before its last dense layer.
    kinds = [type(m) for m in gan.discriminator.modules()]
    assert MinibatchStdDev in kinds and MinibatchDiscrimination in kinds
    # EMA with decay 0.9 in warm-up after G's steps 1 and 2: decays 1/10, then 2/11.
    (g1, g2), start = recorder.g_weights, recorder.ema_start
    d1, d2 = 1 / 10, 2 / 11
    for ema, w0, w1, w2 in zip(gan.generator_ema.parameters(), start, g1, g2, strict=True):
        assert torch.allclose(ema, d2 * (d1 * w0 + (1 - d1) * w1) + (1 - d2) * w2, atol=1e-6)
    assert any(not torch.equal(ema, w) for ema, w in zip(gan.generator_ema.parameters(), g2,
                                                         strict=True))


def test_max_steps_counts_generator_steps_with_several_critic_steps(tmp_path):
    recorder = RecordSteps()
    gan, trainer = fit_tiny(["model=wgan_gp", "model.d_steps=3", "model.generator.widths=[8,8]",
                             "model.discriminator.widths=[8,8]"], tmp_path, max_steps=3,
                            callbacks=[recorder])
    assert [name for name, *_ in recorder.steps] == ["D", "D", "D", "G"] * 3
    assert gan.generator_steps == 3 and gan.discriminator_steps == 9
    assert trainer.global_step == 12 and trainer.max_steps == 3


def test_gan_losses_match_their_closed_forms_at_known_points():
    zero, two = torch.zeros(4), torch.full((4,), 2.0)
    assert discriminator_loss("minimax", zero, zero).item() == pytest.approx(math.log(2))
    assert generator_loss("minimax", zero).item() == pytest.approx(-math.log(2))
    assert generator_loss("non_saturating", zero).item() == pytest.approx(math.log(2))
    assert discriminator_loss("least_squares", zero, zero).item() == pytest.approx(0.5)
    assert discriminator_loss("least_squares", zero, zero, 0.5).item() == pytest.approx(0.125)
    assert generator_loss("least_squares", two).item() == pytest.approx(0.5)
    assert discriminator_loss("hinge", zero, zero).item() == pytest.approx(2.0)
    assert discriminator_loss("hinge", two, -two).item() == 0.0
    assert discriminator_loss("wasserstein", two, zero).item() == pytest.approx(-2.0)
    assert generator_loss("hinge", two).item() == generator_loss("wasserstein", two).item() == -2
    with pytest.raises(GenmodelsError, match="valid choices: minimax"):
        generator_loss("vanilla", zero)
    with pytest.raises(GenmodelsError, match="label_smoothing"):
        discriminator_loss("hinge", zero, zero, 0.1)


def test_penalties_on_a_linear_critic_with_gradient_norm_two():
    weight = torch.zeros(1, 3, 2, 2)
    weight[0, 0, 0, 0] = 2.0

    def critic(x):
        return (x * weight).flatten(1).sum(1)

    real, fake = torch.randn(5, 3, 2, 2), torch.randn(5, 3, 2, 2)
    assert gradient_penalty(critic, real, fake).item() == pytest.approx(1.0)  # (2 - 1)^2
    assert r1_penalty(critic, real).item() == pytest.approx(4.0)  # 2^2


def test_minibatch_layers_see_the_variation_across_the_batch():
    same = torch.ones(8, 3, 4, 4)
    stat = MinibatchStdDev(group_size=4)(same)
    assert stat.shape == (8, 4, 4, 4) and stat[:, 3].abs().max() < 1e-3
    varied = MinibatchStdDev(group_size=4)(torch.randn(8, 3, 4, 4))
    assert varied[:, 3].min() > 0.1
    layer = MinibatchDiscrimination(in_features=6, kernels=5, kernel_dim=3)
    out = layer(torch.ones(4, 6))
    # Identical examples: each is at L1 distance 0 from the 3 others: exp(0) * 3.
    assert out.shape == (4, 11) and torch.allclose(out[:, 6:], torch.full((4, 5), 3.0))


def test_replay_draws_part_of_each_batch_from_the_buffer():
    buffer = ReplayBuffer(capacity=8, share=0.5)
    fresh = torch.zeros(6, 1, 2, 2)
    assert buffer.mix(fresh) is fresh  # nothing stored yet
    buffer.push(torch.full((8, 1, 2, 2), 7.0))
    mixed = buffer.mix(fresh)
    assert mixed.shape == fresh.shape
    assert (mixed[:3] == 0).all() and (mixed[3:] == 7).all()
    buffer.push(torch.full((3, 1, 2, 2), 5.0))  # first in, first out
    assert (buffer.images == 5).flatten(1).all(1).sum() == 3 and buffer.filled == 8


def test_progressive_growing_follows_its_schedule(tmp_path):
    schedule = GrowthSchedule(fade_images=32, stable_images=32)
    assert [schedule.at(k) for k in (0, 31, 32, 48, 64, 96, 112)] == [
        (0, 1.0), (0, 1.0), (1, 0.0), (1, 0.5), (1, 1.0), (2, 0.0), (2, 0.5)]
    # Batches of 16: the 8th D step starts after 112 images, at stage 2 half faded in.
    gan, _ = fit_tiny(["model=progan", *TINY_PROGAN], tmp_path, max_steps=8)
    for network in (gan.generator, gan.generator_ema, gan.discriminator):
        assert (network.stage, network.alpha, network.resolution) == (2, 0.5, 16)
    assert gan.discriminator.stage_alpha.tolist() == [2.0, 0.5]  # saved in checkpoints



UNTIMED_PROGAN = [o for o in TINY_PROGAN if "growth" not in o]


def test_progan_phases_are_fitted_to_the_run_so_that_it_ends_at_full_size(tmp_path, caplog):
    # 14 D steps of 16 reals: 224 images, in 2 * 4 - 1 equal phases (4 stages up to 32x32
    # for 28x28 digits). The paper's 800k per phase (or our old 60k) never left 4x4 here.
    gan, trainer = fit_tiny(["model=progan", *UNTIMED_PROGAN], tmp_path, max_steps=14)
    assert gan.growth.state_dict() == {"fade_images": 32, "stable_images": 32}
    for network in gan.progressive_networks():
        assert (network.stage, network.alpha, network.resolution) == (3, 1.0, 32)
    # A longer run keeps growing on the phases it started with (saved in its checkpoints).
    trainer.save_checkpoint(tmp_path / "grown.ckpt")
    cfg = compose_config(["dataset.batch_size=16", "model=progan", *UNTIMED_PROGAN], tmp_path)
    resumed = build(cfg.model)
    longer = L.Trainer(max_steps=20, limit_val_batches=0, logger=False, accelerator="cpu",
                       callbacks=essential_callbacks(), enable_checkpointing=False,
                       enable_progress_bar=False, enable_model_summary=False)
    longer.fit(resumed, build(cfg.dataset), ckpt_path=tmp_path / "grown.ckpt")
    assert resumed.growth.state_dict() == {"fade_images": 32, "stable_images": 32}
    # Set phases that the run is too short for: said before the first step (a warning: the
    # run may be extended later).
    caplog.clear()
    fit_tiny(["model=progan", *UNTIMED_PROGAN, "model.growth.fade_images=64",
              "model.growth.stable_images=64"], tmp_path, max_steps=14)
    assert ("model.growth reaches its top resolution (32x32) after 384 real images, but this "
            "run shows D 224: it ends at 16x16 (faded in to 50%)") in caplog.text


def test_a_conditional_progan_grows_too(tmp_path):
    cfg = compose_config(["dataset.batch_size=16", "model=progan", *UNTIMED_PROGAN,
                          "+model.num_classes=10"], tmp_path)
    generator, discriminator = (OmegaConf.to_container(cfg.model[name], resolve=True)
                                for name in ("generator", "discriminator"))
    cfg.model.generator = {"_target_": "genmodels.nn.ConditionalGenerator", "latent_dim": 16,
                           "num_classes": 10, "network": {**generator, "_partial_": True}}
    cfg.model.discriminator = {"_target_": "genmodels.nn.ConditionalDiscriminator",
                               "channels": 1, "num_classes": 10,
                               "network": {**discriminator, "_partial_": True}}
    gan = build(cfg.model)
    trainer = L.Trainer(max_steps=14, limit_val_batches=0, logger=False, accelerator="cpu",
                        callbacks=essential_callbacks(), enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(gan, build(cfg.dataset))
    assert len(gan.progressive_networks()) == 3  # G, its EMA copy and D, inside the wrappers
    for network in gan.progressive_networks():
        assert (network.stage, network.alpha) == (3, 1.0)

def test_fade_in_blends_the_new_block_with_the_previous_stage():
    torch.manual_seed(0)
    g = ProGANGenerator(8, 1, 28, max_width=8, min_width=8, output_activation="identity")
    d = ProGANDiscriminator(1, 28, max_width=8, min_width=8)
    z, x = torch.randn(4, 8), torch.randn(4, 1, 28, 28)

    def at(network, stage, alpha, inputs):
        network.set_stage(stage, alpha)
        return network(inputs)

    assert torch.allclose(at(g, 1, 0.0, z), at(g, 0, 1.0, z), atol=1e-5)
    assert torch.allclose(at(d, 1, 0.0, x), at(d, 0, 1.0, x), atol=1e-5)
    blend = (at(g, 1, 0.0, z) + at(g, 1, 1.0, z)) / 2
    assert torch.allclose(at(g, 1, 0.5, z), blend, atol=1e-5)
    assert not torch.allclose(at(g, 1, 1.0, z), at(g, 1, 0.0, z))


def test_style_mixing_switches_to_a_second_coding_at_one_layer():
    torch.manual_seed(0)
    g = StyleGANGenerator(8, 1, 16, mapping_layers=2, max_width=8, min_width=8, mixing_prob=1)
    z = torch.randn(6, 8)
    styles = g.train().styles(z)
    own = g.mapping(z)
    assert styles.shape == (6, g.num_styles, 8)
    for image, w in zip(styles, own, strict=True):
        first = torch.isclose(image, w).all(1)
        crossover = int(first.long().argmin())
        assert 0 < crossover and first[:crossover].all() and not first[crossover:].any()
        assert torch.equal(image[crossover:], image[crossover].expand_as(image[crossover:]))
    assert torch.allclose(g.eval().styles(z), own[:, None].expand_as(styles))  # no mixing


def test_cgan_samples_follow_the_requested_labels(tmp_path):
    gan = build(compose_config(["model=cgan"], tmp_path).model).eval()
    assert gan.sample(3, labels=[0, 5, 9]).shape == (3, 1, 28, 28)
    assert gan.sample(12).shape == (12, 1, 28, 28)
    twos = gan.sample(4, torch.Generator().manual_seed(0), labels=[2] * 4)
    sevens = gan.sample(4, torch.Generator().manual_seed(0), labels=[7] * 4)
    assert not torch.allclose(twos, sevens)  # same noise, other class
    with pytest.raises(GenmodelsError, match=r"or 3 of them, in \[0, 10\)"):
        gan.sample(3, labels=[0, 1, 10])
    with pytest.raises(GenmodelsError, match="not conditional"):
        build(compose_config(["model=dcgan"], tmp_path).model).sample(2, labels=[1, 2])
    with pytest.raises(GenmodelsError, match="needs class labels, but this dataset has none"):
        gan.real_batch((torch.zeros(4, 1, 28, 28), torch.full((4,), -1)))


def test_cgan_discriminator_sees_the_label_as_one_hot_image_channels(tmp_path):
    """Mirza & Osindero, 2014: D(x, y) judges the image with its label, which enters as
    num_classes constant channels (1 in the label's, 0 elsewhere)."""
    torch.manual_seed(0)
    gan = build(compose_config(["model=cgan", "model.discriminator.network.widths=[8,16]"],
                               tmp_path).model)
    d = gan.discriminator.eval()  # no dropout: the same image gets the same verdict
    x = torch.rand(4, 1, 28, 28) * 2 - 1
    labels = torch.tensor([0, 3, 3, 9])
    maps = torch.zeros(4, 10, 28, 28)
    maps[torch.arange(4), labels] = 1.0
    with torch.no_grad():
        difference = d(x, labels) - d.net(torch.cat([x, maps], 1))
        assert difference.abs().max().item() < 1e-6, difference
        # The same images under other labels get other verdicts.
        verdicts = torch.stack([d(x, torch.full((4,), k)) for k in range(10)])
    assert (verdicts.std(0) > 1e-4).all(), verdicts


def test_conditional_sample_grid_has_one_row_per_class(tmp_path):
    gan = build(compose_config(["model=cgan"], tmp_path).model)
    trainer = SimpleNamespace(sanity_checking=False, is_global_zero=True, current_epoch=0,
                              loggers=[])
    ImageGrids(save_dir=str(tmp_path)).on_validation_epoch_end(trainer, gan)
    grid = read_image(str(tmp_path / "samples_epoch0000.png"))
    assert grid.shape[1:] == (10 * 30 + 2, 8 * 30 + 2)  # 10 rows of 8, 2-pixel padding


def test_ema_generator_averages_with_a_warm_up_and_is_used_for_sampling(tmp_path):
    gan = build(compose_config(["model=dcgan", "model.ema_decay=0.75"], tmp_path).model)
    # After G's n-th step: ema <- d ema + (1 - d) G, d = min(0.75, n / (9 + n)).
    for steps, kept in ((1, 0.1), (3, 0.25), (1000, 0.75)):
        for p in gan.generator_ema.parameters():
            p.data.fill_(1.0)
        gan.update_generator_ema(steps)
        for ema, live in zip(gan.generator_ema.parameters(), gan.generator.parameters(),
                             strict=True):
            assert torch.allclose(ema, kept + (1 - kept) * live)
    gan.eval()
    z = torch.randn(2, 100, generator=torch.Generator().manual_seed(1))
    sample = gan.sample(2, generator=torch.Generator().manual_seed(1))
    assert torch.allclose(sample, gan.generator_ema(z))
    assert not torch.allclose(sample, gan.generator(z))
    live = gan.sample(2, generator=torch.Generator().manual_seed(1), ema=False)
    assert torch.allclose(live, gan.generator(z))
    assert torch.equal(gan.sample(2, generator=torch.Generator().manual_seed(1), ema=True),
                       sample)
    without = build(compose_config(["model=dcgan", "model.ema_decay=null"], tmp_path).model)
    with pytest.raises(GenmodelsError, match="has none"):
        without.sample(2, ema=True)


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
