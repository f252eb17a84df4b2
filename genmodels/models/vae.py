"""Variational autoencoders (Kingma & Welling, "Auto-Encoding Variational Bayes", 2014).

One class for the whole family; each model is a config that picks the encoder/decoder
networks, the likelihood and the loss weights (conf/model/vae*.yaml, conv_vae*.yaml,
faces_vae.yaml, beta_vae.yaml).
"""

import math
from collections.abc import Callable

import torch
from torch import nn

from genmodels.errors import GenmodelsError
from genmodels.models.base import GenerativeModel, check_latent_size, flat_output_width
from genmodels.nn.layers import INITS
from genmodels.nn.losses import bernoulli_nll, gaussian_nll, kl_to_standard_normal

LIKELIHOODS = ("bernoulli", "gaussian")
RECON_REDUCTIONS = ("sum", "mean")


class VAE(GenerativeModel):
    """Encoder -> (mean, log-variance) of q(z|x) -> z by reparameterization -> decoder.

    Logged in nats per image (summed over pixels and latent dimensions), whatever the
    weights below: `recon` = E_q[-log p(x|z)] (one sample), `kl` = KL(q(z|x) || N(0, I))
    (closed form) and `elbo` = -(recon + kl), the evidence lower bound. Training and
    evaluation use the same `loss`:

        loss = recon_weight * recon / D + kl_weight * kl,

    where D = 1 with recon_reduction="sum" (then weights 1, 1 give the negative ELBO) and D =
    the number of pixel values with recon_reduction="mean" (the Keras convention of a
    per-pixel mean reconstruction loss times a factor, as in Foster's "Generative Deep
    Learning" VAEs). kl_weight = beta > 1 is the beta-VAE (Higgins et al., 2017). With
    `kl_capacity` (nats) the KL term becomes kl_weight * |kl - C| with C growing linearly
    from 0 to kl_capacity over `kl_capacity_steps` steps (Burgess et al., 2018, eq. 8).

    likelihood="bernoulli": binary cross-entropy from logits, images in [0, 1].
    likelihood="gaussian": N(mean, sigma^2) per pixel, the mean squashed into the value
    range (sigmoid or tanh); sigma = gaussian_std, fixed or (learn_gaussian_std) one
    learned number (Rybkin et al., 2021, "calibrated decoders").
    posterior_init: the (mean, log-variance) head's weights: "torch" (PyTorch's default)
    or "glorot" (Keras' two Glorot-uniform Dense layers, zero biases).
    epsilon_std: the reparameterization draws eps ~ N(0, epsilon_std^2) (a "sampling noise
    scale", as in some Keras recipes). That is the same as q(z|x) having its variance
    multiplied by epsilon_std^2, so `posterior` returns that variance and the KL, the ELBO
    and the importance-sampled likelihood stay exact for the distribution actually used.
    """

    def __init__(self, encoder: nn.Module, decoder: nn.Module, latent_dim: int,
                 optimizer: Callable, channels: int, image_size: int,
                 value_range: list[float], likelihood: str = "bernoulli",
                 kl_weight: float = 1.0, recon_weight: float = 1.0,
                 recon_reduction: str = "sum", gaussian_std: float = 0.1,
                 learn_gaussian_std: bool = False, epsilon_std: float = 1.0,
                 kl_capacity: float | None = None, kl_capacity_steps: int = 10000,
                 posterior_init: str = "torch", scheduler: Callable | None = None):
        super().__init__(channels, image_size, value_range, optimizer, scheduler)
        check_latent_size("latent_dim", latent_dim)
        if likelihood not in LIKELIHOODS:
            raise GenmodelsError(
                f"Unknown likelihood {likelihood!r}; valid choices: {LIKELIHOODS}."
            )
        if likelihood == "bernoulli" and self.value_range != (0.0, 1.0):
            raise GenmodelsError(
                f"likelihood=bernoulli needs value_range=[0, 1], got {list(value_range)}."
            )
        if recon_reduction not in RECON_REDUCTIONS:
            raise GenmodelsError(f"Unknown recon_reduction {recon_reduction!r}; valid choices:"
                                 f" {RECON_REDUCTIONS}.")
        for name, value in (("gaussian_std", gaussian_std), ("epsilon_std", epsilon_std),
                            ("recon_weight", recon_weight), ("kl_capacity_steps",
                                                             kl_capacity_steps)):
            if not value > 0:
                raise GenmodelsError(f"model.{name} must be positive, got {value!r}.")
        if kl_weight < 0 or (kl_capacity is not None and kl_capacity < 0):
            raise GenmodelsError(f"model.kl_weight and model.kl_capacity must be >= 0, got "
                                 f"{kl_weight!r} and {kl_capacity!r}.")
        self.encoder, self.decoder = encoder, decoder
        self.latent_dim = latent_dim
        self.to_posterior = nn.Linear(flat_output_width(encoder, self.image_shape), 2 * latent_dim)
        if posterior_init not in INITS:
            raise GenmodelsError(f"Unknown model.posterior_init {posterior_init!r}; valid "
                                 f"choices: {', '.join(INITS)}.")
        if posterior_init == "glorot":
            # Keras' two Dense heads (mean, log-variance), each Glorot-uniform on its own
            # shape: the limit of a (latent_dim, features) layer, not of the joined one.
            with torch.no_grad():
                for head in self.to_posterior.weight.chunk(2):
                    nn.init.xavier_uniform_(head)
                nn.init.zeros_(self.to_posterior.bias)
        self.likelihood = likelihood
        self.kl_weight, self.recon_weight = kl_weight, recon_weight
        self.recon_divisor = 1 if recon_reduction == "sum" else math.prod(self.image_shape)
        self.kl_capacity, self.kl_capacity_steps = kl_capacity, kl_capacity_steps
        self.log_epsilon_variance = 2 * math.log(epsilon_std)
        log_std = torch.tensor(math.log(gaussian_std))
        if learn_gaussian_std and likelihood == "gaussian":
            self.log_gaussian_std = nn.Parameter(log_std)
        else:
            # Not saved: checkpoints of fixed-std models keep the keys they always had.
            self.register_buffer("log_gaussian_std", log_std, persistent=False)

    def posterior(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and log-variance of q(z|x)."""
        mean, logvar = self.to_posterior(self.encoder(x).flatten(1)).chunk(2, dim=1)
        return mean, logvar + self.log_epsilon_variance

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.posterior(x)[0]

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """The decoder's mean image: Bernoulli probabilities or the Gaussian mean."""
        return self.output_mean(self.decoder(z))

    def output_mean(self, decoder_out: torch.Tensor) -> torch.Tensor:
        if self.likelihood == "bernoulli" or self.value_range == (0.0, 1.0):
            return torch.sigmoid(decoder_out)
        return torch.tanh(decoder_out)

    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(x))

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None,
               temperature: float = 1.0) -> torch.Tensor:
        return self.decode(temperature * self.randn(n, self.latent_dim, generator=generator))

    def reconstruction_nll(self, decoder_out: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """-log p(x|z) per image, in nats."""
        if self.likelihood == "bernoulli":
            return bernoulli_nll(decoder_out, x)
        return gaussian_nll(self.output_mean(decoder_out), x, self.log_gaussian_std.exp())

    def capacity(self) -> float:
        """Burgess et al.'s KL target C, growing linearly with the optimizer steps."""
        return self.kl_capacity * min(1.0, self.global_step / self.kl_capacity_steps)

    def losses(self, batch) -> dict[str, torch.Tensor]:
        x, _ = batch
        mean, logvar = self.posterior(x)
        z = mean + (0.5 * logvar).exp() * torch.randn_like(mean)  # reparameterization trick
        recon = self.reconstruction_nll(self.decoder(z), x).mean()
        kl = kl_to_standard_normal(mean, logvar).mean()
        losses = {"recon": recon, "kl": kl, "elbo": -(recon + kl)}
        kl_term = kl
        if self.kl_capacity is not None:
            capacity = self.capacity()
            kl_term = (kl - capacity).abs()
            losses["capacity"] = torch.tensor(capacity, device=kl.device)
        if self.likelihood == "gaussian" and isinstance(self.log_gaussian_std, nn.Parameter):
            losses["gaussian_std"] = self.log_gaussian_std.detach().exp()
        losses["loss"] = self.recon_weight * recon / self.recon_divisor + self.kl_weight * kl_term
        return losses
