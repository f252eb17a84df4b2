"""Generative adversarial networks (Goodfellow et al., "Generative Adversarial Nets", 2014)."""

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from genmodels.models.base import GenerativeModel


class GAN(GenerativeModel):
    """A generator G(z) and a discriminator D(x) (one logit per image) trained in turn.

    Each batch runs the classic two-phase loop with Lightning's manual optimization:
      1. D learns to label generated images 0 and real images 1 (G is not updated);
      2. G learns to make the frozen D label its images 1 (the non-saturating loss).
    Lightning's `global_step` counts optimizer steps, so it advances by 2 per batch.
    """

    progress_bar_metrics = ("d_loss", "g_loss")

    def __init__(self, generator: nn.Module, discriminator: nn.Module, latent_dim: int,
                 g_optimizer: Callable, d_optimizer: Callable, channels: int, image_size: int,
                 value_range: list[float]):
        super().__init__(channels, image_size, value_range)
        self.automatic_optimization = False
        self.generator, self.discriminator = generator, discriminator
        self.latent_dim = latent_dim
        self.g_optimizer_factory, self.d_optimizer_factory = g_optimizer, d_optimizer

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        return self.generator(self.randn(n, self.latent_dim, generator=generator))

    def discriminator_loss(self, real: torch.Tensor, fake: torch.Tensor):
        """Binary cross-entropy of D on fakes (label 0) and reals (label 1), in one batch."""
        logits = self.discriminator(torch.cat([fake, real])).float()
        fake_logits, real_logits = logits.split([len(fake), len(real)])
        loss = F.binary_cross_entropy_with_logits(
            logits, torch.cat([torch.zeros_like(fake_logits), torch.ones_like(real_logits)])
        )
        accuracy = {"d_real_acc": (real_logits > 0).float().mean(),
                    "d_fake_acc": (fake_logits < 0).float().mean()}
        return loss, accuracy

    def generator_loss(self, fake: torch.Tensor) -> torch.Tensor:
        """Binary cross-entropy of D on fakes labelled real: G wants D to say 1."""
        logits = self.discriminator(fake).float()
        return F.binary_cross_entropy_with_logits(logits, torch.ones_like(logits))

    def training_step(self, batch, batch_idx):
        real, _ = batch
        n = len(real)
        d_optimizer, g_optimizer = self.optimizers()

        # Phase 1: train the discriminator on fake (0) and real (1) images.
        with torch.no_grad():
            fake = self.generator(self.randn(n, self.latent_dim))
        self.toggle_optimizer(d_optimizer)
        d_loss, accuracy = self.discriminator_loss(real, fake)
        d_optimizer.zero_grad(set_to_none=True)
        self.manual_backward(d_loss)
        d_optimizer.step()
        self.untoggle_optimizer(d_optimizer)

        # Phase 2: train the generator through the frozen discriminator, all labels 1.
        self.toggle_optimizer(g_optimizer)
        g_loss = self.generator_loss(self.generator(self.randn(n, self.latent_dim)))
        g_optimizer.zero_grad(set_to_none=True)
        self.manual_backward(g_loss)
        g_optimizer.step()
        self.untoggle_optimizer(g_optimizer)

        self._log_losses({"d_loss": d_loss, "g_loss": g_loss, **accuracy}, "train", n)

    def losses(self, batch) -> dict[str, torch.Tensor]:
        """Both players' losses on held-out real images and fresh fakes."""
        real, _ = batch
        fake = self.sample(len(real))
        d_loss, accuracy = self.discriminator_loss(real, fake)
        return {"d_loss": d_loss, "g_loss": self.generator_loss(fake), **accuracy}

    def configure_optimizers(self):
        # Named parameter groups give the learning-rate monitor readable names.
        d_optimizer = self.d_optimizer_factory(
            [{"params": self.discriminator.parameters(), "name": "discriminator"}])
        g_optimizer = self.g_optimizer_factory(
            [{"params": self.generator.parameters(), "name": "generator"}])
        return d_optimizer, g_optimizer
