"""Denoising diffusion probabilistic models (Ho et al., "Denoising Diffusion Probabilistic
Models", 2020), with the improvements most implementations carry: the cosine schedule
(Nichol & Dhariwal, 2021), v-prediction (Salimans & Ho, 2022), DDIM sampling (Song et al.,
2021), an EMA of the weights, and class conditioning with classifier-free guidance (Ho &
Salimans, 2022). The math of the process is in genmodels/nn/diffusion.py, the network in
genmodels/nn/unet.py.
"""

import copy
import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from genmodels.config import check_whole_number
from genmodels.errors import GenmodelsError
from genmodels.models.base import ClassConditional, GenerativeModel
from genmodels.nn.diffusion import (
    PREDICTIONS,
    SAMPLERS,
    NoiseSchedule,
    check_choice,
    ddim_step,
    ddpm_step,
    discretized_gaussian_log_likelihood,
    normal_kl,
    posterior_mean_variance,
    sampling_timesteps,
)
from genmodels.optim import update_moving_average


class DDPM(ClassConditional, GenerativeModel):
    """A network learns to undo Gaussian noise added over T steps; sampling runs it from
    pure noise back to an image.

    Training (Algorithm 1 of Ho et al.): x_0 from the data, t ~ Uniform{1..T}, eps ~ N(0, I),
    x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps, and a gradient step on the simple loss
    ||target - network(x_t, t)||^2 (mean over pixels), where the target is eps
    (`prediction="epsilon"`) or v = sqrt(abar_t) eps - sqrt(1 - abar_t) x_0 (`"v"`).
    `min_snr_gamma`: each example's loss weighted so that it is min(SNR_t, gamma) times the
    squared error of the x_0 it implies (Hang et al., "Efficient Diffusion Training via
    Min-SNR Weighting Strategy", 2023, eq. 8; gamma 5 there): the nearly noise-free
    timesteps, whose high SNR dominates the simple loss's x_0 weighting, stop crowding out
    the others. null: the simple loss.
    Logged: `loss` and `loss_t<a>_<b>`, the loss of the examples whose index t lies in
    each of `loss_buckets` equal ranges of 0 .. T-1 (low t: little noise; in training on
    logging steps only: finding a range's examples waits for the GPU); validation also
    logs `ema_loss`, the same loss for the EMA network that samples.

    Sampling (`sample`): x_T ~ N(0, I), then `steps` updates down to x_0, either DDPM's
    ancestral step (Algorithm 2; respaced when steps < T) or DDIM's (eq. 12, with `eta`).
    The predicted x_0 is clipped to [-1, 1] at each step (`clip_x0`, as in Ho et al.'s
    code). Images are in [-1, 1] (`value_range`).

    `ema_decay`: an exponential moving average of the network's weights, with the warm-up
    of `ema_decay_at`, updated after every optimizer step; `sample` uses it unless
    ema=False. null: none.

    `num_classes`: class-conditional; during training each label is replaced by the null
    label (index num_classes) with probability `label_dropout` (0.1 by default), so the one
    network is also unconditional, and sampling mixes both with the guidance weight w:
    eps = (1 + w) eps(x_t, y) - w eps(x_t, null) (Ho & Salimans, eq. 6). w = 0 is the
    conditional model, w = -1 the unconditional one.
    """

    def __init__(self, network: nn.Module, optimizer: Callable, channels: int,
                 image_size: int, value_range: list[float], timesteps: int = 1000,
                 schedule: str = "cosine", prediction: str = "epsilon",
                 ema_decay: float | None = 0.9999, num_classes: int | None = None,
                 label_dropout: float | None = None, sampler: str = "ddim",
                 sample_steps: int = 50, eta: float = 0.0, guidance: float = 0.0,
                 clip_x0: bool = True, loss_buckets: int = 4,
                 min_snr_gamma: float | None = None, scheduler: Callable | None = None):
        super().__init__(channels, image_size, value_range, optimizer, scheduler)
        if self.value_range != (-1.0, 1.0):
            raise GenmodelsError(
                f"DDPM works on images scaled to [-1, 1] (Ho et al., sec. 3.3: the noise "
                f"and the clipping assume it), got model.value_range={list(value_range)}: "
                "set model.value_range=[-1.0,1.0].")
        check_choice("model.prediction", prediction, PREDICTIONS)
        self.schedule = NoiseSchedule(schedule, timesteps)
        if ema_decay is not None and not 0.0 < ema_decay < 1.0:
            raise GenmodelsError(f"model.ema_decay must be in (0, 1) or null, got "
                                 f"{ema_decay!r}.")
        if getattr(network, "num_classes", None) != num_classes:
            raise GenmodelsError(
                f"model.num_classes={num_classes} but the network's num_classes is "
                f"{getattr(network, 'num_classes', None)}: set model.network.num_classes="
                "${model.num_classes}.")
        if label_dropout is None:
            label_dropout = 0.1 if num_classes is not None else 0.0
        if not 0.0 <= label_dropout < 1.0 or (label_dropout and num_classes is None):
            raise GenmodelsError(f"model.label_dropout must be in [0, 1), and 0 or null "
                                 f"without num_classes; got {label_dropout!r}.")
        check_whole_number("model.loss_buckets", loss_buckets, 1, timesteps)
        if min_snr_gamma is not None and not (isinstance(min_snr_gamma, int | float)
                                              and min_snr_gamma > 0):
            raise GenmodelsError(f"model.min_snr_gamma must be a positive number (5 in Hang "
                                 f"et al.) or null for the simple loss, got {min_snr_gamma!r}.")
        self.network = network
        self.network_ema = (copy.deepcopy(network).requires_grad_(False)
                            if ema_decay is not None else None)
        self.prediction, self.ema_decay = prediction, ema_decay
        self.num_classes, self.label_dropout = num_classes, label_dropout
        self.clip_x0, self.loss_buckets = clip_x0, loss_buckets
        self.min_snr_gamma = min_snr_gamma
        # The sampling defaults; each is checked now, so a bad config stops before training.
        self.sampling_defaults = self.sampling_settings(steps=sample_steps, sampler=sampler,
                                                        eta=eta, guidance=guidance,
                                                        defaults=None)
        self._ema_updated_at_step = 0  # the global_step of the EMA's last update

    @property
    def timesteps(self) -> int:
        return self.schedule.timesteps

    # ----- training: Algorithm 1 ------------------------------------------------------------

    def training_step(self, batch, batch_idx):
        """Algorithm 1 of Ho et al.: one gradient step on the simple loss of a batch at
        uniformly drawn timesteps (`losses`); the EMA follows after the optimizer step."""
        losses = self.losses(batch)
        return {"loss": losses["loss"], "log": losses}

    def losses(self, batch, generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        """The simple loss of Ho et al. (eq. 14) and its value per range of timesteps;
        `generator` (CPU) draws t, the noise and the dropped labels reproducibly."""
        x0, labels = self.real_batch(batch)
        n = len(x0)
        t = self.draw(lambda g: torch.randint(0, self.timesteps, (n,), generator=g), generator)
        noise = self.draw(lambda g: torch.randn(x0.shape, generator=g), generator)
        x_t = self.schedule.q_sample(x0, t, noise)
        target = self.schedule.training_target(self.prediction, x0, noise, t)
        labels = self.drop_labels(labels, generator)
        per_example = self.per_example_loss(self.network, x_t, t, labels, target)
        losses = {"loss": per_example.mean()}
        if self.monitoring or not self.training:
            losses |= self.bucket_losses(per_example, t)
        if not self.training and self.network_ema is not None:
            losses["ema_loss"] = self.per_example_loss(self.network_ema, x_t, t, labels,
                                                       target).mean()
        return losses

    def per_example_loss(self, network, x_t, t, labels, target) -> torch.Tensor:
        """||target - network(x_t, t[, y])||^2, the mean over each image's pixel values,
        times the Min-SNR weight when `min_snr_gamma` is set."""
        output = network(x_t, t, labels) if labels is not None else network(x_t, t)
        loss = F.mse_loss(output.float(), target.float(), reduction="none").flatten(1).mean(1)
        if self.min_snr_gamma is None:
            return loss
        # The eps loss is SNR times the x_0 loss, the v loss (SNR + 1) times it.
        snr = self.schedule.snr(t)
        return loss * snr.clamp(max=self.min_snr_gamma) / (
            snr if self.prediction == "epsilon" else snr + 1)

    def bucket_losses(self, per_example: torch.Tensor, t: torch.Tensor) -> dict:
        """The mean loss of the examples whose t is in each of `loss_buckets` equal ranges
        of 0 .. T-1, named loss_t<first>_<last>; a range no example fell in is left out."""
        losses = {}
        edges = [round(i * self.timesteps / self.loss_buckets)
                 for i in range(self.loss_buckets + 1)]
        for low, high in zip(edges[:-1], edges[1:], strict=True):
            in_range = (t >= low) & (t < high)
            if in_range.any():
                losses[f"loss_t{low}_{high - 1}"] = per_example[in_range].mean().detach()
        return losses

    def draw(self, make: Callable, generator: torch.Generator | None) -> torch.Tensor:
        """A random tensor on the model's device: from the global RNG there, or from a CPU
        `generator` (reproducible evaluation)."""
        if generator is None:
            with torch.device(self.device):
                return make(None)
        return make(generator).to(self.device)

    def drop_labels(self, labels, generator=None):
        """Each label replaced by the null label (num_classes) with probability
        label_dropout, in training and evaluation alike (the same objective)."""
        if labels is None or not self.label_dropout:
            return labels
        dropped = self.draw(lambda g: torch.rand(len(labels), generator=g), generator)
        return torch.where(dropped < self.label_dropout, self.num_classes, labels)

    def validation_step(self, batch, batch_idx):
        # The same t and noise for a batch at every epoch: the curve shows the model change.
        generator = torch.Generator().manual_seed(batch_idx)
        self.log_evaluation_losses(self.losses(batch, generator), "val", len(batch[0]))

    def test_step(self, batch, batch_idx):
        generator = torch.Generator().manual_seed(batch_idx)
        self.log_evaluation_losses(self.losses(batch, generator), "test", len(batch[0]))

    # ----- the EMA of the weights -----------------------------------------------------------

    def on_train_start(self) -> None:
        self._ema_updated_at_step = self.global_step  # a resumed run's EMA is up to date

    def on_train_batch_end(self, outputs, batch, batch_idx) -> None:
        # After Lightning's optimizer step; with gradient accumulation, once per step taken.
        if self.global_step > self._ema_updated_at_step:
            self.update_ema()

    @torch.no_grad()
    def update_ema(self, steps: int | None = None) -> None:
        """ema <- decay * ema + (1 - decay) * weights after the n-th optimizer step (n:
        `steps`, by default Lightning's global_step; a loop without a Trainer counts its
        own), decay = ema_decay_at(ema_decay, n - 1)."""
        steps = self.global_step if steps is None else steps
        self._ema_updated_at_step = steps
        if self.network_ema is None:
            return
        update_moving_average(self.network_ema, self.network, self.ema_decay, steps - 1)

    # ----- sampling: Algorithm 2 and DDIM ---------------------------------------------------

    def sampling_settings(self, steps=None, sampler=None, eta=None, guidance=None,
                          defaults: dict | None = None) -> dict:
        """The sampling options, each given or else the model's default, checked."""
        defaults = defaults or {}
        settings = {"steps": steps if steps is not None else defaults.get("steps"),
                    "sampler": sampler if sampler is not None else defaults.get("sampler"),
                    "eta": eta if eta is not None else defaults.get("eta"),
                    "guidance": guidance if guidance is not None else defaults.get("guidance")}
        check_choice("sampler", settings["sampler"], SAMPLERS)
        sampling_timesteps(self.timesteps, settings["steps"])  # checks steps
        if type(settings["eta"]) not in (int, float) or settings["eta"] < 0:
            raise GenmodelsError(f"eta must be a number of at least 0 (0: deterministic DDIM, "
                                 f"1: DDPM's noise), got {settings['eta']!r}.")
        if eta not in (None, 0) and settings["sampler"] == "ddpm":
            raise GenmodelsError(f"eta={eta} applies to sampler=ddim; sampler=ddpm always "
                                 "adds the posterior's noise (DDIM with eta=1).")
        if type(settings["guidance"]) not in (int, float):
            raise GenmodelsError(f"guidance must be a number, got {settings['guidance']!r}.")
        if settings["guidance"] and self.num_classes is None:
            raise GenmodelsError(f"guidance={settings['guidance']} needs a class-conditional "
                                 "model (model.num_classes set); this one is unconditional.")
        return settings

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None,
               labels: torch.Tensor | list[int] | None = None, steps: int | None = None,
               sampler: str | None = None, eta: float | None = None,
               guidance: float | None = None, ema: bool | None = None) -> torch.Tensor:
        """n images in [-1, 1]. steps (1 .. T), sampler ("ddim" or "ddpm"), eta (DDIM's
        noise, 0: deterministic) and guidance (classifier-free weight w) default to the
        model's config (model.sample_steps, sampler, eta, guidance). A conditional model
        draws the classes in `labels` (by default 0, 1, ..., num_classes - 1, 0, 1, ...).
        ema: None uses the EMA network when there is one, True insists on it, False takes
        the trained weights as they are."""
        settings = self.sampling_settings(steps, sampler, eta, guidance,
                                          self.sampling_defaults)
        network = self.sampling_network(ema)
        labels = self.sampling_labels(n, labels)
        x = self.randn(n, *self.image_shape, generator=generator)  # x_T ~ N(0, I)
        return self.denoise(x, network, labels, settings, generator)

    @torch.no_grad()
    def denoising_chain(self, rows: int = 8, columns: int = 8,
                        generator: torch.Generator | None = None) -> torch.Tensor:
        """`rows` samples, each as a row of `columns` images from x_T (the noise) through
        x_t at evenly spaced steps of the model's sampler to x_0, as `sample` draws them
        from the same generator: (rows * columns, C, H, W) in [-1, 1], row by row."""
        settings = self.sampling_settings(defaults=self.sampling_defaults)
        x = self.randn(rows, *self.image_shape, generator=generator)
        states = [x]
        self.denoise(x, self.sampling_network(None), self.sampling_labels(rows, None),
                     settings, generator, states)
        picks = torch.linspace(0, len(states) - 1, columns).round().long().tolist()
        chain = torch.stack([states[i] for i in picks], dim=1)  # (rows, columns, C, H, W)
        return chain.flatten(0, 1).clamp(-1.0, 1.0)

    def denoise(self, x: torch.Tensor, network, labels, settings: dict,
                generator: torch.Generator | None = None,
                states: list[torch.Tensor] | None = None) -> torch.Tensor:
        """x_T -> x_0 in settings["steps"] steps of the chosen sampler; each step's x is
        appended to `states` when given."""
        n = len(x)
        timesteps = sampling_timesteps(self.timesteps, settings["steps"])
        noisy = settings["sampler"] == "ddpm" or settings["eta"] > 0
        for t, t_prev in zip(timesteps, [*timesteps[1:], -1], strict=True):
            t_batch = torch.full((n,), t, device=self.device, dtype=torch.long)
            output = self.guided_output(network, x, t_batch, labels, settings["guidance"])
            x0 = self.schedule.predicted_x0(self.prediction, x, t_batch, output)
            if self.clip_x0:
                x0 = x0.clamp(-1.0, 1.0)
            abar_t = self.schedule.abar(t_batch)
            abar_prev = self.schedule.abar(torch.full_like(t_batch, t_prev))
            z = (self.randn(*x.shape, generator=generator) if noisy and t_prev >= 0
                 else torch.zeros_like(x))
            if settings["sampler"] == "ddpm":
                x = ddpm_step(x, x0, abar_t, abar_prev, z)
            else:
                eps = self.schedule.predicted_noise(x, t_batch, x0)  # of the clipped x_0
                x = ddim_step(x, x0, eps, abar_t, abar_prev, settings["eta"], z)
            if states is not None:
                states.append(x)
        return x.clamp(-1.0, 1.0)

    # ----- DDIM inversion: images <-> their noise, for the latent-space tools ---------------

    @property
    def latent_dim(self) -> int:
        """The size of the codings encode() gives: x_T has the image's shape."""
        return math.prod(self.image_shape)

    @torch.no_grad()
    def encode(self, x: torch.Tensor, labels=None) -> torch.Tensor:
        """DDIM inversion (Song et al., sec. 4.3; Dhariwal & Nichol, 2021, app. F): the
        deterministic DDIM path run from the images up to x_T, flattened to (n, latent_dim),
        so that decode() brings them back and interpolating between two such codings
        (slerp: they are Gaussian-like) walks between two images. In model.sample_steps
        steps; the network's noise at each step stands in for the next step's."""
        network = self.sampling_network(None)
        labels = self.sampling_labels(len(x), labels)
        guidance = self.sampling_defaults["guidance"] if labels is not None else 0.0
        # decode()'s levels, upward: x_0 (level -1), then t = 0 .. T-1 as sampling visits them
        levels = [-1, *sampling_timesteps(self.timesteps, self.sampling_defaults["steps"])[::-1]]
        x = x.to(self.device, torch.float32)
        for t, t_next in zip(levels[:-1], levels[1:], strict=True):
            t_batch = torch.full((len(x),), max(t, 0), device=self.device, dtype=torch.long)
            output = self.guided_output(network, x, t_batch, labels, guidance)
            x0 = self.schedule.predicted_x0(self.prediction, x, t_batch, output)
            eps = self.schedule.predicted_noise(x, t_batch, x0)
            if t < 0:  # at x_0 itself, known; the noise is the network's guess at t = 0
                x0 = x
            abar_next = self.schedule.abar(torch.full_like(t_batch, t_next))
            x = abar_next.sqrt() * x0 + (1 - abar_next).sqrt() * eps  # eq. 12, eta 0, upward
        return x.flatten(1)

    @torch.no_grad()
    def decode(self, z: torch.Tensor, labels=None) -> torch.Tensor:
        """Images from codings (n, latent_dim) taken as x_T: DDIM with eta 0, the inverse
        of encode(); random codings give samples."""
        settings = self.sampling_settings(None, "ddim", 0.0, None, self.sampling_defaults)
        labels = self.sampling_labels(len(z), labels)
        x = z.to(self.device, torch.float32).reshape(len(z), *self.image_shape)
        return self.denoise(x, self.sampling_network(None), labels, settings)

    def guided_output(self, network, x, t, labels, guidance: float) -> torch.Tensor:
        """The network's output; with labels and a guidance weight w != 0, classifier-free
        guidance (1 + w) out(x, y) - w out(x, null), in one forward of both halves. (Linear
        in the output, so guiding v guides eps alike.)"""
        if labels is None:
            return network(x, t)
        if not guidance:
            return network(x, t, labels)
        null = torch.full_like(labels, self.num_classes)
        both = network(torch.cat([x, x]), torch.cat([t, t]), torch.cat([labels, null]))
        conditional, unconditional = both.chunk(2)
        return (1 + guidance) * conditional - guidance * unconditional

    def sampling_network(self, ema: bool | None) -> nn.Module:
        if ema and self.network_ema is None:
            raise GenmodelsError("ema=true needs a model that keeps an EMA of its weights; "
                                 "this one has none (set model.ema_decay).")
        use_ema = self.network_ema is not None if ema is None else ema
        return self.network_ema if use_ema else self.network

    # ----- the variational bound on the likelihood ---------------------------------------------

    @torch.no_grad()
    def variational_bound(self, x0: torch.Tensor, generator: torch.Generator | None = None,
                          ema: bool | None = None) -> dict[str, torch.Tensor]:
        """The terms of Ho et al.'s bound (eq. 5) on -log p(x_0), in nats per image (N,):
            prior     L_T = KL(q(x_T | x_0) || N(0, I)),
            diffusion sum over t = 2 .. T of L_{t-1} = KL(q(x_{t-1} | x_t, x_0) ||
                      p(x_{t-1} | x_t)), each at one x_t ~ q(x_t | x_0),
            decoder   L_0 = -log p(x_0 | x_1), the discretized Gaussian of eq. 13,
        and their sum `total`. p(x_{t-1} | x_t) is the sampler's: the posterior at the
        predicted (clipped, with clip_x0) x_0, with variance beta tilde_t; the decoder's
        variance is beta tilde_2, as Ho et al.'s code clips the 0 of beta tilde_1. It costs
        T network evaluations. The network is the one `sample` uses (`ema`); a conditional
        model is scored unconditionally, with the null label."""
        network = self.sampling_network(ema)
        x0 = x0.to(self.device)
        labels = (torch.full((len(x0),), self.num_classes, device=self.device)
                  if self.num_classes is not None else None)
        last = torch.full((len(x0),), self.timesteps - 1, device=self.device)
        abar_last, x0_64 = self.schedule.abar(last).double(), x0.double()
        prior = normal_kl(abar_last.sqrt() * x0_64, 1 - abar_last, torch.zeros_like(x0_64),
                          torch.ones_like(x0_64)).flatten(1).sum(1).float()
        diffusion = torch.zeros(len(x0), device=self.device)
        for t in range(1, self.timesteps):
            noise = self.randn(*x0.shape, generator=generator)
            diffusion += self.bound_term(network, x0, t, noise, labels)
        decoder = self.bound_term(network, x0, 0, self.randn(*x0.shape, generator=generator),
                                  labels)
        return {"prior": prior, "diffusion": diffusion, "decoder": decoder,
                "total": prior + diffusion + decoder}

    def bound_term(self, network, x0, t: int, noise, labels) -> torch.Tensor:
        """L_t of the bound at index t (the papers' L_{t-1} at their t = index + 1), per
        image: the KL for t >= 1, the decoder's -log p(x_0 | x_1) at t = 0."""
        t_batch = torch.full((len(x0),), t, device=self.device, dtype=torch.long)
        x_t = self.schedule.q_sample(x0, t_batch, noise)
        output = network(x_t, t_batch, labels) if labels is not None else network(x_t, t_batch)
        predicted = self.schedule.predicted_x0(self.prediction, x_t, t_batch, output.float())
        if self.clip_x0:
            predicted = predicted.clamp(-1.0, 1.0)
        # In float64: the KLs divide by variances down to ~1e-5 (beta tilde at small t).
        x0, x_t, predicted = x0.double(), x_t.double(), predicted.double()
        abar_t = self.schedule.abar(t_batch).double()
        abar_prev = self.schedule.abar(t_batch - 1).double()
        model_mean, _ = posterior_mean_variance(predicted, x_t, abar_t, abar_prev)
        if t == 0:
            std = self.schedule.posterior_variance(t_batch + 1).double().sqrt()
            nll = -discretized_gaussian_log_likelihood(x0, model_mean, std)
            return nll.flatten(1).sum(1).float()
        true_mean, variance = posterior_mean_variance(x0, x_t, abar_t, abar_prev)
        return normal_kl(true_mean, variance, model_mean, variance).flatten(1).sum(1).float()

    # ----- optimizers ---------------------------------------------------------------------------

    def configure_optimizers(self):
        """The optimizer on the network's weights (the EMA copy is not trained)."""
        if self.optimizer_factory is None:
            raise GenmodelsError(
                "The model config has no `optimizer` (a `_partial_` torch.optim entry).")
        optimizer = self.optimizer_factory(self.network.parameters())
        if self.scheduler_factory is None:
            return optimizer
        return {"optimizer": optimizer, "lr_scheduler": self.scheduler_factory(optimizer)}
