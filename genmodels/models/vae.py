"""Variational autoencoders (Kingma & Welling, "Auto-Encoding Variational Bayes", 2014)."""

from collections.abc import Callable

import torch
from torch import nn

from genmodels.errors import GenmodelsError
from genmodels.models.base import GenerativeModel, flat_output_width
from genmodels.nn.losses import bernoulli_nll, gaussian_nll, kl_to_standard_normal

LIKELIHOODS = ("bernoulli", "gaussian")


class VAE(GenerativeModel):
    """Encoder -> (mean, log-variance) of q(z|x) -> z by reparameterization -> decoder.

    The training loss is the negative ELBO with the KL term weighted:
        loss = E_q[-log p(x|z)] + kl_weight * KL(q(z|x) || N(0, I)),
    in nats per image (summed over pixels and latent dimensions). The logged `elbo` is
    always the unweighted bound, so runs with different weights compare.
    likelihood="bernoulli": binary cross-entropy from logits, images in [0, 1];
    likelihood="gaussian": N(decoder output, gaussian_std^2) per pixel.
    """

    def __init__(self, encoder: nn.Module, decoder: nn.Module, latent_dim: int,
                 optimizer: Callable, channels: int, image_size: int,
                 value_range: list[float], likelihood: str = "bernoulli",
                 kl_weight: float = 1.0, gaussian_std: float = 0.1,
                 scheduler: Callable | None = None):
        super().__init__(channels, image_size, value_range, optimizer, scheduler)
        if likelihood not in LIKELIHOODS:
            raise GenmodelsError(
                f"Unknown likelihood {likelihood!r}; valid choices: {LIKELIHOODS}."
            )
        if likelihood == "bernoulli" and self.value_range != (0.0, 1.0):
            raise GenmodelsError(
                f"likelihood=bernoulli needs value_range=[0, 1], got {list(value_range)}."
            )
        self.encoder, self.decoder = encoder, decoder
        self.latent_dim = latent_dim
        self.to_posterior = nn.Linear(flat_output_width(encoder, self.image_shape), 2 * latent_dim)
        self.likelihood, self.kl_weight, self.gaussian_std = likelihood, kl_weight, gaussian_std

    def posterior(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and log-variance of q(z|x)."""
        mean, logvar = self.to_posterior(self.encoder(x).flatten(1)).chunk(2, dim=1)
        return mean, logvar

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.posterior(x)[0]

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        out = self.decoder(z)
        return torch.sigmoid(out) if self.likelihood == "bernoulli" else out

    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(x))

    def sample(self, n: int, generator: torch.Generator | None = None,
               temperature: float = 1.0) -> torch.Tensor:
        return self.decode(temperature * self.randn(n, self.latent_dim, generator=generator))

    def reconstruction_nll(self, decoder_out: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """-log p(x|z) per image, in nats."""
        if self.likelihood == "bernoulli":
            return bernoulli_nll(decoder_out, x)
        return gaussian_nll(decoder_out, x, self.gaussian_std)

    def losses(self, batch) -> dict[str, torch.Tensor]:
        x, _ = batch
        mean, logvar = self.posterior(x)
        z = mean + (0.5 * logvar).exp() * torch.randn_like(mean)  # reparameterization trick
        recon = self.reconstruction_nll(self.decoder(z), x)
        kl = kl_to_standard_normal(mean, logvar)
        return {
            "loss": (recon + self.kl_weight * kl).mean(),
            "recon": recon.mean(),
            "kl": kl.mean(),
            "elbo": -(recon + kl).mean(),
        }
