"""Generative adversarial networks (Goodfellow et al., "Generative Adversarial Nets", 2014),
with the variants of the GAN family as configuration: losses, penalties, step ratios,
experience replay, spectral norm, label conditioning, generator EMA, progressive growing."""

import copy
import logging
import math
from collections.abc import Callable
from contextlib import contextmanager

import torch
from torch import nn

from genmodels.errors import GenmodelsError
from genmodels.models.base import (
    ClassConditional,
    GenerativeModel,
    check_latent_size,
    check_output_range,
)
from genmodels.nn.augment import check_augment, diff_augment
from genmodels.nn.gan_layers import ReplayBuffer, spectral_normalize, uses_batch_statistics
from genmodels.nn.gan_losses import (
    PENALTIES,
    check_loss,
    discriminator_loss,
    generator_loss,
    gradient_penalty,
    r1_penalty,
)
from genmodels.nn.layers import output_activation
from genmodels.nn.progan import Progressive, fade_real_images
from genmodels.nn.stylegan import StyleGANGenerator
from genmodels.optim import update_moving_average

log = logging.getLogger(__name__)

# Images drawn to recompute the batch-norm statistics of the EMA generator.
EMA_STATISTICS_IMAGES, EMA_STATISTICS_BATCH = 512, 128


class GAN(ClassConditional, GenerativeModel):
    """A generator G(z) and a discriminator D(x) (one raw output per image) trained in turn.

    Each batch runs the classic two-phase loop with Lightning's manual optimization:
      1. D takes a step on real and generated images (G is not updated);
      2. after every `d_steps`-th D step, G takes `g_steps` steps through the frozen D.

    Step counting: Lightning's `global_step` counts optimizer steps (D's and G's), but in a
    GAN `trainer.max_steps` means *generator* steps: the engine converts it to optimizer
    steps with `optimizer_steps_for`, ceil(max_steps / g_steps) * (d_steps + g_steps).
    `generator_steps` and `discriminator_steps` are derived from `global_step`, so they
    survive a resume from a checkpoint.

    Options (all off by default except the non-saturating loss):
      - `loss`: minimax, non_saturating, least_squares, hinge or wasserstein
        (genmodels/nn/gan_losses.py); `label_smoothing`: one-sided, on real labels;
      - `penalty`: gradient_penalty (WGAN-GP) or r1, weighted by `penalty_weight`;
      - `half_batch`: each D step sees half a batch of reals and half a batch of fakes;
      - `replay_capacity`/`replay_share`: experience replay of past fakes for D;
      - `spectral_norm`: spectral normalization of every layer of D;
      - `ema_decay`: keep an exponential moving average of G, used by `sample` (its
        batch-norm statistics are recomputed for its own weights before it samples);
      - `num_classes`: conditional GAN; G and D are called as G(z, y) and D(x, y); the
        fakes of D's step are drawn for the real batch's classes;
      - `growth`: a progressive-growing schedule (genmodels/nn/progan.py) that sets the
        resolution stage and fade-in of G and D from the number of real images D has
        seen over all processes; the real images are faded between resolutions as well;
      - `augment`: DiffAugment (Zhao et al., 2020; genmodels/nn/augment.py), e.g.
        [translation, cutout]: D sees reals and fakes, in D's steps and G's, through the
        same random differentiable transforms (in training only);
      - `drift_weight`: ProGAN's drift term, drift_weight * E[D(x)^2] on reals, which keeps
        a Wasserstein critic's outputs near zero (Karras et al., 2018, sec. A.1: 0.001);
      - `joint_d_batch`: D scores reals and fakes in one forward on their concatenation
        (as Geron's Keras loop does; faster), when D has no batch-statistics layers (batch
        norm, minibatch stddev/discrimination), where it would mix the two: then two;
      - `eval_generator_for_d`: D's fakes come from G in eval mode (batch norm with its
        running statistics, which it then does not update), as `generator(noise)` does in
        Geron's Keras loop; G's own steps always run it in training mode.
    Training stops with TrainingDiverged when a loss or a gradient norm is not finite
    (`watched_for_divergence`, checked by the engine's DivergenceGuard).
    """

    progress_bar_metrics = ("d_loss", "g_loss")
    # GAN losses do not fall as samples improve: the best checkpoint and early stopping
    # follow D's validation loss upwards, how badly a held-out check tells real images
    # from fresh fakes (as hparams_search=dcgan_optuna does). Sample quality itself:
    # callbacks=[quality,early_stopping] callbacks.best_checkpoint.monitor=val/fd_classifier
    # callbacks.best_checkpoint.mode=min (docs/usage.md).
    monitored_metric = ("val/d_loss", "max")
    watched_for_divergence = {"d_loss": "discriminator loss or gradient",
                              "d_grad_norm": "discriminator loss or gradient",
                              "g_loss": "generator loss or gradient",
                              "g_grad_norm": "generator loss or gradient"}
    divergence_advice = "try lower learning rates, a gradient penalty or spectral norm"

    def __init__(self, generator: nn.Module, discriminator: nn.Module, latent_dim: int,
                 g_optimizer: Callable, d_optimizer: Callable, channels: int, image_size: int,
                 value_range: list[float], loss: str = "non_saturating",
                 label_smoothing: float = 0.0, penalty: str | None = None,
                 penalty_weight: float = 10.0, d_steps: int = 1, g_steps: int = 1,
                 half_batch: bool = False, replay_capacity: int = 0, replay_share: float = 0.5,
                 spectral_norm: bool = False, ema_decay: float | None = None,
                 num_classes: int | None = None, growth=None, joint_d_batch: bool = False,
                 eval_generator_for_d: bool = False, drift_weight: float = 0.0,
                 augment: list[str] | None = None):
        super().__init__(channels, image_size, value_range)
        check_latent_size("latent_dim", latent_dim)
        self.automatic_optimization = False
        if label_smoothing and loss in ("hinge", "wasserstein"):
            # A default of the model (model=dcgan smooths by 0.1) must not refuse
            # model.loss=hinge: it has no labels to smooth.
            log.warning("model.label_smoothing=%s is not used by the %s loss (it smooths the "
                        "real labels of minimax, non_saturating and least_squares); ignored.",
                        label_smoothing, loss)
            label_smoothing = 0.0
        check_loss(loss, label_smoothing)
        if penalty is not None and penalty not in PENALTIES:
            raise GenmodelsError(
                f"Unknown penalty {penalty!r}; valid choices: {', '.join(PENALTIES)} or null.")
        if d_steps < 1 or g_steps < 1:
            raise GenmodelsError(f"d_steps and g_steps must be >= 1, got {d_steps}, {g_steps}.")
        if ema_decay is not None and not 0.0 < ema_decay < 1.0:
            raise GenmodelsError(f"ema_decay must be in (0, 1) or null, got {ema_decay!r}.")
        if drift_weight < 0:
            raise GenmodelsError(f"drift_weight must be >= 0, got {drift_weight!r}.")
        if replay_capacity and num_classes:
            raise GenmodelsError("Experience replay stores unlabelled fakes; it cannot be used "
                                 "with a conditional GAN (num_classes set).")
        check_output_range(output_activation(generator), self.value_range, "generator",
                           "model.generator.network.output_activation" if num_classes
                           else "model.generator.output_activation")
        self.generator = generator
        self.discriminator = spectral_normalize(discriminator) if spectral_norm else discriminator
        self.latent_dim, self.num_classes = latent_dim, num_classes
        self.g_optimizer_factory, self.d_optimizer_factory = g_optimizer, d_optimizer
        self.loss, self.label_smoothing = loss, label_smoothing
        self.penalty, self.penalty_weight = penalty, penalty_weight
        self.d_steps, self.g_steps, self.half_batch = d_steps, g_steps, half_batch
        self.replay = ReplayBuffer(replay_capacity, replay_share) if replay_capacity else None
        self.ema_decay, self.growth, self.drift_weight = ema_decay, growth, drift_weight
        self.joint_d_batch = joint_d_batch and not uses_batch_statistics(self.discriminator)
        self.eval_generator_for_d = eval_generator_for_d
        self.augment = check_augment(augment)
        self.generator_ema = None
        if ema_decay is not None:
            self.generator_ema = copy.deepcopy(generator).requires_grad_(False)
        self._ema_statistics_stale = False  # the EMA weights moved since its BN statistics
        self._growth_checked = False  # the growth schedule fitted to (or checked against) the run
        self._progressive = None

    # ----- the algorithm ------------------------------------------------------------------

    def training_step(self, batch, batch_idx):
        real, labels = self.real_batch(batch)
        d_optimizer, g_optimizer = self.optimizers()

        # Phase 1: one discriminator step on real and generated images (G frozen).
        if self.half_batch:  # half a batch of each, as many images as a G step sees
            real = real[: len(real) // 2]
            labels = labels[: len(real)] if labels is not None else None
        if self.growth is not None:
            if not self._growth_checked:
                self.fit_growth_to_run(len(real))
            real = self.grow_for_step(real, self.discriminator_steps, self.trainer.world_size)
        fake, fake_labels = self.fakes_for_discriminator(len(real), labels)
        if self.replay is not None:
            fake, fresh = self.replay.mix(fake), fake
            self.replay.push(fresh)
        self.toggle_optimizer(d_optimizer)
        d_logs = self.discriminator_losses(real, labels, fake, fake_labels)
        self.take_step(d_optimizer, d_logs, "d")
        self.untoggle_optimizer(d_optimizer)

        # Phase 2: after every `d_steps`-th D step, G steps through the frozen D.
        if self.discriminator_steps % self.d_steps:
            return {"log": d_logs}
        for _ in range(self.g_steps):
            self.toggle_optimizer(g_optimizer)
            fake, fake_labels = self.generate(len(batch[0]))
            g_logs = {"g_loss": generator_loss(self.loss,
                                               self.discriminate(fake, fake_labels))}
            self.take_step(g_optimizer, g_logs, "g")
            self.untoggle_optimizer(g_optimizer)
            self.update_generator_ema()
        return {"log": d_logs | g_logs}  # logged by the engine as train/<name>

    @torch.no_grad()
    def fakes_for_discriminator(self, n: int, labels: torch.Tensor | None = None):
        """n images from G for a D step, without gradients. A conditional GAN draws them
        for the real batch's `labels`: D sees every class as often among fakes as among
        reals, and a gradient penalty's interpolate between a real and a fake image lies
        between two images of the one class it is scored as."""
        if not self.eval_generator_for_d:
            return self.generate(n, labels=labels)
        self.generator.eval()
        try:
            return self.generate(n, labels=labels)
        finally:
            self.generator.train()

    def discriminator_losses(self, real, labels, fake, fake_labels) -> dict[str, torch.Tensor]:
        """D's loss (plus penalty) and what D says about reals and fakes."""
        if self.joint_d_batch:
            both_labels = None if labels is None else torch.cat([labels, fake_labels])
            out = self.discriminate(torch.cat([real, fake.to(real.dtype)]), both_labels).float()
            real_out, fake_out = out[: len(real)], out[len(real) :]
        else:
            real_out = self.discriminate(real, labels).float()
            fake_out = self.discriminate(fake, fake_labels).float()
        logs = {"d_loss": discriminator_loss(self.loss, real_out, fake_out, self.label_smoothing)}
        if self.drift_weight:
            logs["drift"] = real_out.square().mean()
            logs["d_loss"] = logs["d_loss"] + self.drift_weight * logs["drift"]
        if self.penalty is not None and torch.is_grad_enabled():
            if self.penalty == "gradient_penalty":
                penalty = gradient_penalty(lambda x: self.discriminate(x, labels), real, fake)
            else:
                penalty = r1_penalty(lambda x: self.discriminate(x, labels), real)
            logs["penalty"] = penalty
            logs["d_loss"] = logs["d_loss"] + self.penalty_weight * penalty
        if self.monitoring or not self.training:
            logs |= {"d_real": real_out.mean(), "d_fake": fake_out.mean(),
                     "d_real_acc": (real_out > 0).float().mean(),
                     "d_fake_acc": (fake_out < 0).float().mean()}
        return logs

    def take_step(self, optimizer, logs: dict[str, torch.Tensor], player: str) -> None:
        """Backward and step on the player's loss (`logs["d_loss"]` or `logs["g_loss"]`).
        On monitoring steps, adds its gradient norm (unscaled under 16-mixed precision) to
        `logs`, which is logged and watched for NaN or infinite values."""
        optimizer.zero_grad(set_to_none=True)
        self.manual_backward(logs[f"{player}_loss"])
        if self.monitoring:
            grads = [p.grad for group in optimizer.param_groups for p in group["params"]
                     if p.grad is not None]
            grad_norm = torch.nn.utils.get_total_norm(grads)
            if (scaler := self.grad_scaler) is not None:
                # The gradients are scaled; scale(1) is the scale as a tensor on the
                # device, where get_scale() would read it back.
                grad_norm = grad_norm / scaler.scale(torch.ones_like(grad_norm))
            logs[f"{player}_grad_norm"] = grad_norm
        optimizer.step()

    def training_progress(self) -> str:
        return f"generator step {self.generator_steps}"

    def twice_differentiated(self) -> tuple[str, ...]:
        """The networks whose gradient is differentiated again: D under a gradient penalty
        (speed.compile leaves them eager)."""
        return ("discriminator",) if self.penalty is not None else ()

    # ----- generator, discriminator, sampling ----------------------------------------------

    def generate(self, n: int, network: nn.Module | None = None, generator=None, labels=None,
                 truncation: float | None = None):
        """n images from `network` (G by default) and the labels they were asked for. With
        a `generator`, noise the network draws itself (StyleGAN's) is seeded from it too."""
        network = self.generator if network is None else network
        z = self.randn(n, self.latent_dim, generator=generator)
        options = {} if truncation is None else {"truncation": truncation}
        if self.num_classes is not None:
            if labels is None:  # classes drawn uniformly, on the device unless seeded on CPU
                device = "cpu" if generator is not None else self.device
                labels = torch.randint(0, self.num_classes, (n,), generator=generator,
                                       device=device)
            labels = torch.as_tensor(labels, dtype=torch.long).to(self.device)
        with global_rng_seeded_from(generator, self.device):
            if self.num_classes is None:
                return network(z, **options), None
            return network(z, labels, **options), labels

    def discriminate(self, images: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        """D's raw outputs; in training, on the images through `augment`'s transforms."""
        if self.augment and self.training:
            images = diff_augment(images, self.augment)
        if self.num_classes is None:
            return self.discriminator(images)
        return self.discriminator(images, labels)

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None,
               labels: torch.Tensor | list[int] | None = None,
               ema: bool | None = None, truncation: float | None = None) -> torch.Tensor:
        """n images; a conditional GAN draws the classes in `labels` (n of them; by default
        0, 1, ..., num_classes - 1, 0, 1, ...). ema: None uses the EMA copy of G when the
        GAN keeps one, False the live G, True the EMA copy (an error if there is none).
        truncation psi (StyleGAN): styles w_avg + psi (w - w_avg); None or 1: none."""
        if ema and self.generator_ema is None:
            raise GenmodelsError("ema=true needs a GAN that keeps an EMA copy of its "
                                 "generator; this one has none (set model.ema_decay).")
        if truncation is not None:
            style_network = getattr(self.generator, "net", self.generator)
            if not isinstance(style_network, StyleGANGenerator):
                raise GenmodelsError(
                    f"truncation={truncation} needs a StyleGAN generator (it truncates towards"
                    f" the average style w), but this GAN's is {type(style_network).__name__};"
                    " leave truncation unset.")
            if not -1.0 <= truncation <= 1.0:
                raise GenmodelsError(f"truncation must be in [-1, 1], got {truncation!r}.")
        labels = self.sampling_labels(n, labels)
        use_ema = self.generator_ema is not None if ema is None else ema
        network = self.ema_generator() if use_ema else self.generator
        return self.generate(n, network, generator, labels, truncation)[0]

    @torch.no_grad()
    def decode(self, z: torch.Tensor, labels=None) -> torch.Tensor:
        """G's images for given latents z (n, latent_dim), from the EMA copy of G when
        there is one (as `sample`): what the latent-space tools walk (interpolation between
        seeds, semantic grids). A conditional GAN draws the classes in `labels` (one for
        all the images, or one each; by default 0, 1, 2, ... as `sample`). Noise the network
        draws itself (StyleGAN's) is the same at every call, so that a walk changes with z
        alone."""
        labels = self.sampling_labels(len(z), labels)
        network = self.ema_generator() if self.generator_ema is not None else self.generator
        with global_rng_seeded_from(torch.Generator().manual_seed(0), self.device):
            if labels is None:
                return network(z.to(self.device))
            return network(z.to(self.device), labels.to(self.device))

    @torch.no_grad()
    def update_generator_ema(self, generator_steps: int | None = None):
        """ema <- decay * ema + (1 - decay) * G after G's n-th step (n: `generator_steps`,
        by default counted from Lightning's global_step), for G's weights, with
        decay = ema_decay_at(ema_decay, n - 1): a warm-up that soon forgets the random
        initial weights (a fixed 0.999 from the start scored FD 244 against 113 without an
        EMA after 10 epochs of MNIST, docs/results.md). Buffers are copied (the ProGAN
        stage, StyleGAN's average w). Batch-norm statistics are buffers too, but the live
        G's belong to other weights: the EMA copy's are recomputed when it samples."""
        if self.generator_ema is None:
            return
        steps = self.generator_steps if generator_steps is None else generator_steps
        update_moving_average(self.generator_ema, self.generator, self.ema_decay, steps - 1)
        self._ema_statistics_stale = True

    def ema_generator(self) -> nn.Module:
        """The EMA copy of G, with batch-norm statistics of its own weights."""
        if self._ema_statistics_stale:
            self.recompute_ema_statistics()
        return self.generator_ema

    @torch.no_grad()
    def recompute_ema_statistics(self) -> None:
        """The EMA generator's batch-norm statistics, recomputed as the population mean and
        variance over EMA_STATISTICS_IMAGES of its own images, from a fixed seed (and a
        forked RNG: training's random stream is untouched)."""
        self._ema_statistics_stale = False
        ema = self.generator_ema
        norms = [m for m in ema.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        if not norms:
            return
        momenta, was_training = [norm.momentum for norm in norms], ema.training
        for norm in norms:
            norm.reset_running_stats()
            norm.momentum = None  # a cumulative average over the batches below
        ema.train()
        seed = torch.Generator().manual_seed(0)
        # Batch norm updates its statistics in place, which inference mode would refuse.
        with torch.inference_mode(False):
            for _ in range(EMA_STATISTICS_IMAGES // EMA_STATISTICS_BATCH):
                self.generate(EMA_STATISTICS_BATCH, ema, generator=seed)
        ema.train(was_training)
        for norm, momentum in zip(norms, momenta, strict=True):
            norm.momentum = momentum

    def on_load_checkpoint(self, checkpoint) -> None:
        if self.replay is not None and "replay_buffer" in checkpoint:
            self.replay.load_state_dict(checkpoint["replay_buffer"])
        if self.growth is not None and "growth" in checkpoint:
            self.growth.load_state_dict(checkpoint["growth"])

    def on_save_checkpoint(self, checkpoint) -> None:
        if self.replay is not None:  # past fakes, so that a resumed run replays the same
            checkpoint["replay_buffer"] = self.replay.state_dict()
        if self.growth is not None:  # phases fitted to the first run's length stay
            checkpoint["growth"] = self.growth.state_dict()
        # The EMA generator is saved with the batch-norm statistics it samples with.
        if self.generator_ema is not None and self._ema_statistics_stale:
            self.recompute_ema_statistics()
            for name, buffer in self.generator_ema.named_buffers():
                checkpoint["state_dict"][f"generator_ema.{name}"] = buffer.detach().clone()

    def progressive_networks(self) -> list[Progressive]:
        """G's, its EMA copy's and D's growing networks (inside a conditional wrapper too);
        D's last. Found once: grow() runs every D step."""
        if self._progressive is None:
            networks = (self.generator, self.generator_ema, self.discriminator)
            self._progressive = [module for network in networks if network is not None
                                 for module in network.modules()
                                 if isinstance(module, Progressive)]
        return self._progressive

    def fit_growth_to_run(self, reals_per_step: int) -> None:
        """At the first D step of a run: the growth schedule's phases fitted to the real
        images D will see over the run (max_epochs of batches or max_steps' D steps,
        whichever ends first, on every process), or checked to reach the top stage."""
        trainer = self.trainer
        limits = []
        if trainer.max_epochs not in (None, -1):
            limits.append(trainer.max_epochs * trainer.num_training_batches)
        if trainer.max_steps not in (None, -1):
            limits.append(self.discriminator_steps_at(trainer.max_steps))
        run_images = min(limits, default=math.inf) * reals_per_step * trainer.world_size
        self.growth.fit_to_run(run_images, self.progressive_networks()[-1].num_stages)
        self._growth_checked = True

    def grow(self, images_seen: int) -> None:
        """Progressive growing: set the stage and fade-in of G (and its EMA) and D."""
        stage, alpha = self.growth.at(images_seen)
        for network in self.progressive_networks():
            network.set_stage(stage, alpha)

    def grow_for_step(self, real: torch.Tensor, discriminator_steps: int,
                      world_size: int) -> torch.Tensor:
        """Before a D step on `real` (this process's share, after half_batch): set the
        stage from the real images D saw in the steps before, over all `world_size`
        processes, and return the reals faded to it."""
        self.grow(discriminator_steps * len(real) * world_size)
        return self.fade_reals(real)

    def fade_reals(self, real: torch.Tensor) -> torch.Tensor:
        """Real images at D's current resolution, faded in as G's images are."""
        discriminator = self.progressive_networks()[-1]
        return fade_real_images(real, discriminator.stage, discriminator.alpha)


    # ----- step counting ---------------------------------------------------------------------

    @property
    def generator_steps(self) -> int:
        cycle = self.d_steps + self.g_steps
        return (self.global_step // cycle * self.g_steps
                + max(0, self.global_step % cycle - self.d_steps))

    @property
    def discriminator_steps(self) -> int:
        return self.discriminator_steps_at(self.global_step)

    def discriminator_steps_at(self, optimizer_steps: int) -> int:
        cycle = self.d_steps + self.g_steps
        return optimizer_steps // cycle * self.d_steps + min(optimizer_steps % cycle,
                                                              self.d_steps)

    def optimizer_steps_for(self, steps: int) -> int:
        """`steps` generator steps, as optimizer steps: whole cycles of d_steps D steps and
        g_steps G steps."""
        return math.ceil(steps / self.g_steps) * (self.d_steps + self.g_steps)

    # ----- evaluation, optimizers ------------------------------------------------------------

    def losses(self, batch) -> dict[str, torch.Tensor]:
        """Both players' losses on held-out real images and fresh fakes of the live G,
        measured as in training (the same loss, penalty and drift, faded reals), so that
        training and validation curves compare. With an EMA copy of G, also what D says of
        its images: `ema_g_loss` (G's loss) and `ema_d_fake` (D's mean output)."""
        real, labels = self.real_batch(batch)
        if self.growth is not None:
            real = self.fade_reals(real)
        fake, fake_labels = self.generate(len(real), labels=labels)
        # A penalty differentiates D by its input: grad on, and no inference-mode tensors.
        with torch.inference_mode(False), torch.enable_grad():
            logs = self.discriminator_losses(*(None if t is None else t.clone()
                                               for t in (real, labels, fake, fake_labels)))
        logs = {name: value.detach() for name, value in logs.items()}
        logs["g_loss"] = generator_loss(self.loss, self.discriminate(fake, fake_labels))
        if self.generator_ema is not None:
            ema_fake, ema_labels = self.generate(len(real), self.ema_generator(), labels=labels)
            ema_out = self.discriminate(ema_fake, ema_labels)
            logs["ema_g_loss"] = generator_loss(self.loss, ema_out)
            logs["ema_d_fake"] = ema_out.float().mean()
        return logs

    optimizer_nodes = ("d_optimizer", "g_optimizer")  # as configure_optimizers returns them

    def configure_optimizers(self):
        # Named parameter groups give the learning-rate monitor readable names.
        d_optimizer = self.d_optimizer_factory(
            [{"params": self.discriminator.parameters(), "name": "discriminator"}])
        g_optimizer = self.g_optimizer_factory(
            [{"params": self.generator.parameters(), "name": "generator"}])
        return d_optimizer, g_optimizer


@contextmanager
def global_rng_seeded_from(generator: torch.Generator | None, device: torch.device):
    """The global RNG seeded from `generator` (forked: restored afterwards), for networks
    that draw noise of their own, such as StyleGAN's noise inputs, so that seeded samples
    are reproducible. Without a generator, nothing changes."""
    if generator is None:
        yield
        return
    seed = int(torch.randint(2**62, (), generator=generator))
    accelerated = device.type != "cpu"
    with torch.random.fork_rng(devices=[device] if accelerated else [],
                               device_type=device.type if accelerated else "cuda"):
        torch.manual_seed(seed)
        yield
