"""Autoencoders: x -> encoder -> codings -> decoder -> reconstruction of x."""

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from genmodels.errors import GenmodelsError
from genmodels.models.base import (
    GenerativeModel,
    check_latent_size,
    check_output_range,
    flat_output_width,
)
from genmodels.nn.layers import make_activation
from genmodels.nn.losses import binary_cross_entropy_with_logits

LOSSES = ("bce", "mse")


class AutoEncoder(GenerativeModel):
    """Learns codings by reconstructing its input through a bottleneck.

    loss="bce": binary cross-entropy per pixel (inputs in [0, 1], sigmoid output, computed
    from logits); loss="mse": mean squared error on the `output_activation` output.
    `decoder` is a module, or a function that builds one from the encoder (a Hydra
    `_partial_`, e.g. `TiedDenseDecoder`, whose layers reuse the encoder's weights).
    """

    def __init__(self, encoder: nn.Module, decoder: nn.Module | Callable, codings_dim: int,
                 optimizer: Callable, channels: int, image_size: int, value_range: list[float],
                 loss: str = "bce", output_activation: str | None = "sigmoid",
                 scheduler: Callable | None = None):
        super().__init__(channels, image_size, value_range, optimizer, scheduler)
        check_latent_size("codings_dim", codings_dim)
        if loss not in LOSSES:
            raise GenmodelsError(f"Unknown autoencoder loss {loss!r}; valid choices: {LOSSES}.")
        if loss == "bce" and (output_activation != "sigmoid" or self.value_range != (0.0, 1.0)):
            raise GenmodelsError(
                "loss=bce needs output_activation=sigmoid and value_range=[0, 1], got "
                f"output_activation={output_activation!r}, value_range={list(value_range)}."
            )
        if not isinstance(decoder, nn.Module):
            decoder = decoder(encoder=encoder)
        self.encoder, self.decoder = encoder, decoder
        self.loss_name = loss
        self.output_activation = make_activation(output_activation)
        check_output_range(self.output_activation, self.value_range, "decoder",
                           "model.output_activation")
        if (width := flat_output_width(encoder, self.image_shape)) != codings_dim:
            raise GenmodelsError(
                f"The encoder outputs {width} codings, but codings_dim={codings_dim}."
            )
        # Per-dimension range of the training codings seen in the last epoch: `sample`
        # draws uniformly inside it, the only prior a plain autoencoder has.
        self.register_buffer("codings_low", torch.full((codings_dim,), -1.0))
        self.register_buffer("codings_high", torch.full((codings_dim,), 1.0))
        self._epoch_low = self._epoch_high = None

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x).flatten(1)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.output_activation(self.decoder(z))

    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(x))

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Decode codings drawn uniformly within the range the training codings covered.

        Nothing made the codings fill that box (unlike a VAE's prior, which its KL term
        makes the codings follow), so many such points decode to blurs or non-digits.
        Images from decoders without a squashing output (linear_ae) are clipped to range.
        """
        u = torch.rand(n, self.codings_low.numel(), generator=generator).to(self.device)
        images = self.decode(self.codings_low + u * (self.codings_high - self.codings_low))
        return images.clamp(*self.value_range)

    def reconstruction_loss(self, x: torch.Tensor, codings: torch.Tensor) -> torch.Tensor:
        return self.loss_from_decoder_output(x, self.decoder(codings))

    def loss_from_decoder_output(self, x: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        """The reconstruction loss of the decoder's raw output (before output_activation)."""
        if self.loss_name == "bce":
            return binary_cross_entropy_with_logits(logits, x).mean()
        return F.mse_loss(self.output_activation(logits).float(), x.float())

    def losses(self, batch) -> dict[str, torch.Tensor]:
        x, _ = batch
        codings = self.encode(x)
        if self.training:
            self._track_codings_range(codings.detach())
        return {"loss": self.reconstruction_loss(x, codings)}

    def _track_codings_range(self, codings: torch.Tensor) -> None:
        low, high = codings.float().amin(0), codings.float().amax(0)
        if self._epoch_low is not None:
            low, high = torch.minimum(low, self._epoch_low), torch.maximum(high, self._epoch_high)
        self._epoch_low, self._epoch_high = low, high

    def on_train_epoch_end(self) -> None:
        super().on_train_epoch_end()
        if self._epoch_low is not None:
            self.codings_low.copy_(self._epoch_low)
            self.codings_high.copy_(self._epoch_high)
            self._epoch_low = self._epoch_high = None
