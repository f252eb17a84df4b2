"""Fully connected encoders and decoders for images (Flatten -> MLP -> codings, and back)."""

import math

import torch
from torch import nn

from genmodels.nn.layers import check_image_shape, init_for_activation, make_activation


def mlp(sizes: list[int], activation: str | None, last_activation: str | None) -> nn.Sequential:
    """Dense layers sizes[0] -> sizes[1] -> ... with `activation` between them."""
    layers: list[nn.Module] = []
    for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
        act = activation if i < len(sizes) - 2 else last_activation
        linear = nn.Linear(n_in, n_out)
        init_for_activation(linear, act)
        layers += [linear, make_activation(act)]
    return nn.Sequential(*layers)


class DenseEncoder(nn.Module):
    """Image -> flatten -> dense layers of `hidden_sizes` (+ `out_features`), each followed
    by `activation`: the codings of a plain autoencoder, or the features from which a VAE
    computes its posterior."""

    def __init__(self, channels: int, image_size: int, hidden_sizes: list[int],
                 out_features: int | None = None, activation: str = "selu"):
        super().__init__()
        check_image_shape(channels, image_size)
        sizes = [channels * image_size * image_size, *hidden_sizes]
        if out_features:
            sizes.append(out_features)
        self.net = nn.Sequential(nn.Flatten(), mlp(sizes, activation, activation))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class DenseDecoder(nn.Module):
    """Codings -> dense layers of `hidden_sizes` -> one output per pixel, as an image.

    The output is raw (logits) unless `output_activation` is set: autoencoders and VAEs
    apply their own output function so that their losses can use the stable logit forms.
    """

    def __init__(self, latent_dim: int, channels: int, image_size: int,
                 hidden_sizes: list[int], activation: str = "selu",
                 output_activation: str | None = None):
        super().__init__()
        check_image_shape(channels, image_size)
        image_shape = (channels, image_size, image_size)
        self.net = nn.Sequential(
            mlp([latent_dim, *hidden_sizes, math.prod(image_shape)], activation,
                output_activation),
            nn.Unflatten(1, image_shape),
        )

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z)
