"""Denoising autoencoders (Vincent et al., "Extracting and Composing Robust Features with
Denoising Autoencoders", 2008)."""

import torch

from genmodels.errors import GenmodelsError
from genmodels.models.autoencoder import AutoEncoder
from genmodels.nn.layers import Dropout

NOISES = ("gaussian", "dropout")


class DenoisingAutoEncoder(AutoEncoder):
    """An autoencoder trained to restore clean images from corrupted ones.

    During training only, each input is corrupted before encoding: noise="gaussian" adds
    N(0, noise_level^2) to every pixel, noise="dropout" zeroes each pixel with probability
    noise_level (and scales the rest, as dropout does). The loss compares the
    reconstruction with the clean image. Validation and test see clean inputs, so their
    losses are plain reconstruction losses that compare with other autoencoders.
    `ImageGrids` logs noisy / restored / clean rows for models that have `corrupt`.
    """

    def __init__(self, *args, noise: str = "gaussian", noise_level: float = 0.2, **kwargs):
        super().__init__(*args, **kwargs)
        if noise not in NOISES:
            raise GenmodelsError(f"Unknown noise {noise!r}; valid choices: {NOISES}.")
        if noise_level < 0 or (noise == "dropout" and noise_level >= 1):
            raise GenmodelsError(
                f"noise_level must be >= 0 (and < 1 for dropout), got {noise_level!r}."
            )
        self.noise, self.noise_level = noise, noise_level
        self.dropout = Dropout(noise_level) if noise == "dropout" else None

    def corrupt(self, x: torch.Tensor) -> torch.Tensor:
        """x with this model's noise, whatever the mode (training applies it by itself)."""
        if self.noise == "gaussian":
            return x + self.noise_level * torch.randn_like(x)
        self.dropout.train()
        return self.dropout(x)

    def losses(self, batch) -> dict[str, torch.Tensor]:
        x, _ = batch
        codings = self.encode(self.corrupt(x) if self.training else x)
        if self.training:
            self._track_codings_range(codings.detach())
        return {"loss": self.reconstruction_loss(x, codings)}
