"""Fully connected encoders and decoders for images (Flatten -> MLP -> codings, and back)."""

import math

import torch
import torch.nn.functional as F
from torch import nn

from genmodels.errors import GenmodelsError
from genmodels.nn.layers import (
    apply_init,
    check_image_shape,
    init_for_activation,
    make_activation,
)

# Far above any dense network of this catalogue (784 -> 150 has 118k weights); a dense
# layer on large images (dataset.image_size=1000: 10^6 inputs) would exhaust the memory.
MAX_DENSE_PARAMETERS = 100_000_000


def mlp(sizes: list[int], activation: str | None, last_activation: str | None) -> nn.Sequential:
    """Dense layers sizes[0] -> sizes[1] -> ... with `activation` between them."""
    pairs = zip(sizes[:-1], sizes[1:], strict=True)
    parameters = sum(n_in * n_out + n_out for n_in, n_out in pairs)
    if parameters > MAX_DENSE_PARAMETERS:  # refused before anything is allocated
        raise GenmodelsError(
            f"Dense layers {' -> '.join(map(str, sizes))} would have {parameters:,} "
            f"parameters ({parameters * 4 / 1e9:.1f} GB, several times that to train), "
            f"more than the {MAX_DENSE_PARAMETERS:,} allowed: lower dataset.image_size or "
            "the layer sizes, or use a convolutional model (e.g. model=conv_vae)."
        )
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
    computes its posterior. `init`: "torch" or "glorot" (Keras, see `apply_init`)."""

    def __init__(self, channels: int, image_size: int, hidden_sizes: list[int],
                 out_features: int | None = None, activation: str | None = "selu",
                 out_activation: str | None = "same", init: str = "torch"):
        super().__init__()
        check_image_shape(channels, image_size)
        sizes = [channels * image_size * image_size, *hidden_sizes]
        if out_features:
            sizes.append(out_features)
        # out_activation: the codings' own function (e.g. sigmoid for a sparse autoencoder).
        last = activation if out_activation == "same" else out_activation
        self.net = apply_init(nn.Sequential(nn.Flatten(), mlp(sizes, activation, last)), init)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class DenseDecoder(nn.Module):
    """Codings -> dense layers of `hidden_sizes` -> one output per pixel, as an image.

    The output is raw (logits) unless `output_activation` is set: autoencoders and VAEs
    apply their own output function so that their losses can use the stable logit forms.
    `init`: "torch" or "glorot" (Keras, see `apply_init`).
    """

    def __init__(self, latent_dim: int, channels: int, image_size: int,
                 hidden_sizes: list[int], activation: str | None = "selu",
                 output_activation: str | None = None, init: str = "torch"):
        super().__init__()
        check_image_shape(channels, image_size)
        image_shape = (channels, image_size, image_size)
        self.net = nn.Sequential(
            mlp([latent_dim, *hidden_sizes, math.prod(image_shape)], activation,
                output_activation),
            nn.Unflatten(1, image_shape),
        )
        apply_init(self.net, init)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z)


class TiedDenseDecoder(nn.Module):
    """The mirror of a `DenseEncoder` that reuses its weights, transposed: layer i of the
    decoder computes `activation(h @ W_{n-i} + b_i)` with the encoder's W_{n-i} (shape
    out x in, so `F.linear(h, W.T)` maps back from out to in) and its own bias b_i.

    The encoder's weights are the same Parameter objects, not copies: they are registered
    by the encoder only (held here in a plain list), so they appear once in `parameters()`
    and the state dict, and get the gradients of both the encoding and the decoding side.
    Roughly halves an autoencoder's parameters ("tying weights", Hinton & Salakhutdinov 2006).
    """

    def __init__(self, encoder: DenseEncoder, channels: int, image_size: int,
                 activation: str | None = "selu"):
        super().__init__()
        check_image_shape(channels, image_size)
        linears = [m for m in encoder.modules() if isinstance(m, nn.Linear)]
        if not linears or linears[0].in_features != channels * image_size * image_size:
            raise GenmodelsError(
                "TiedDenseDecoder needs a DenseEncoder of the same image shape "
                f"({channels}x{image_size}x{image_size})."
            )
        self.tied = list(reversed(linears))  # a plain list: not registered a second time
        self.biases = nn.ParameterList(
            nn.Parameter(torch.zeros(linear.in_features)) for linear in self.tied
        )
        # Activations between layers; the last layer's output stays raw (logits).
        self.activations = nn.ModuleList(make_activation(activation) for _ in self.tied[1:])
        self.image_shape = (channels, image_size, image_size)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = z
        for i, (linear, bias) in enumerate(zip(self.tied, self.biases, strict=True)):
            h = F.linear(h, linear.weight.t(), bias)
            if i < len(self.activations):
                h = self.activations[i](h)
        return h.unflatten(1, self.image_shape)


def dense_stages(module: nn.Module) -> list[nn.Sequential]:
    """A dense network cut into its layers: each Linear with the activation after it.

    Greedy layer-wise training trains these one at a time (Flatten/Unflatten are left out;
    callers reshape).
    """
    stages: list[list[nn.Module]] = []
    for layer in module.modules():
        if isinstance(layer, nn.Linear):
            stages.append([layer])
        elif stages and not list(layer.children()) and not isinstance(
                layer, nn.Flatten | nn.Unflatten):
            stages[-1].append(layer)
    return [nn.Sequential(*stage) for stage in stages]
