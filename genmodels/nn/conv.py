"""Convolutional generators and discriminators (DCGAN family).

Every spatial size is derived from the configured image size, so the same config trains
at 28x28, 32x32 or 64x64.
"""

import torch
from torch import nn

from genmodels.errors import GenmodelsError
from genmodels.nn.layers import Dropout, check_image_shape, init_for_activation, make_activation


def same_padding(kernel_size: int) -> int:
    if kernel_size % 2 == 0:
        raise GenmodelsError(f"kernel_size must be odd, got {kernel_size!r}.")
    return kernel_size // 2


class DCGANGenerator(nn.Module):
    """z -> dense -> (widths[0], s, s) -> stride-2 transposed convs -> image.

    Each transposed conv doubles the size, so s = image_size / 2**len(widths). Batch norm
    follows the reshape and every hidden transposed conv (Radford et al., 2016); the
    output layer has none.
    """

    def __init__(self, latent_dim: int, channels: int, image_size: int,
                 widths: list[int] = (128, 64), kernel_size: int = 5,
                 activation: str = "selu", output_activation: str = "tanh",
                 batch_norm: bool = True):
        super().__init__()
        check_image_shape(channels, image_size)
        factor = 2 ** len(widths)
        if image_size % factor:
            raise GenmodelsError(
                f"DCGANGenerator with {len(widths)} upsampling layers needs image_size divisible"
                f" by {factor}, got {image_size}; valid sizes include"
                f" {', '.join(str(factor * k) for k in (4, 7, 8, 16))}."
            )
        start = image_size // factor
        pad = same_padding(kernel_size)
        layers: list[nn.Module] = [
            nn.Linear(latent_dim, widths[0] * start * start),
            nn.Unflatten(1, (widths[0], start, start)),
        ]
        if batch_norm:
            layers.append(nn.BatchNorm2d(widths[0]))
        for i, (n_in, n_out) in enumerate(zip(widths, [*widths[1:], channels], strict=True)):
            is_output = i == len(widths) - 1
            act = output_activation if is_output else activation
            conv = nn.ConvTranspose2d(n_in, n_out, kernel_size, stride=2, padding=pad,
                                      output_padding=1)
            init_for_activation(conv, act)
            layers += [conv, make_activation(act)]
            if batch_norm and not is_output:
                layers.append(nn.BatchNorm2d(n_out))
        self.net = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z)


class DCGANDiscriminator(nn.Module):
    """image -> stride-2 convs (activation, dropout) -> flatten -> one logit per image."""

    def __init__(self, channels: int, image_size: int, widths: list[int] = (64, 128),
                 kernel_size: int = 5, activation: str = "leaky_relu", dropout: float = 0.4):
        super().__init__()
        check_image_shape(channels, image_size)
        pad = same_padding(kernel_size)
        layers: list[nn.Module] = []
        size = image_size
        for n_in, n_out in zip([channels, *widths[:-1]], widths, strict=True):
            layers += [nn.Conv2d(n_in, n_out, kernel_size, stride=2, padding=pad),
                       make_activation(activation), Dropout(dropout)]
            size = (size - 1) // 2 + 1  # ceil(size / 2) for a 'same'-padded stride-2 conv
        layers += [nn.Flatten(), nn.Linear(widths[-1] * size * size, 1)]
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).squeeze(1)


def halvings(image_size: int, n: int) -> list[int]:
    """Feature-map sizes after each of n 2x2 poolings with ceil mode: [image_size, ...].

    Ceil mode keeps odd sizes whole (28 -> 14 -> 7 -> 4), so any image size works.
    """
    sizes = [image_size]
    for _ in range(n):
        sizes.append((sizes[-1] + 1) // 2)
    return sizes


class ConvEncoder(nn.Module):
    """image -> [conv 'same' + activation + 2x2 max pooling] per width -> codings.

    The feature map after the last pooling is the codings, flattened, unless `out_features`
    adds a dense bottleneck of that size after it (Geron, Hands-On ML ch. 17: 16-32-64
    filters, 3x3 kernels, SELU).
    """

    def __init__(self, channels: int, image_size: int, widths: list[int] = (16, 32, 64),
                 kernel_size: int = 3, activation: str = "selu",
                 out_features: int | None = None, out_activation: str | None = "same"):
        super().__init__()
        check_image_shape(channels, image_size)
        pad = same_padding(kernel_size)
        layers: list[nn.Module] = []
        for n_in, n_out in zip([channels, *widths[:-1]], widths, strict=True):
            conv = nn.Conv2d(n_in, n_out, kernel_size, padding=pad)
            init_for_activation(conv, activation)
            layers += [conv, make_activation(activation), nn.MaxPool2d(2, ceil_mode=True)]
        layers.append(nn.Flatten())
        if out_features:
            size = halvings(image_size, len(widths))[-1]
            last = activation if out_activation == "same" else out_activation
            linear = nn.Linear(widths[-1] * size * size, out_features)
            init_for_activation(linear, last)
            layers += [linear, make_activation(last)]
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class ConvDecoder(nn.Module):
    """codings -> (dense ->) feature map -> stride-2 transposed convs -> image (raw logits).

    The mirror of `ConvEncoder`: each 3x3 stride-2 transposed conv doubles the size, with
    output padding chosen so the sizes retrace the encoder's (4 -> 7 -> 14 -> 28). With
    `dense=false` the codings must be the encoder's flattened feature map.
    """

    def __init__(self, latent_dim: int, channels: int, image_size: int,
                 widths: list[int] = (64, 32, 16), kernel_size: int = 3,
                 activation: str = "selu", dense: bool = True):
        super().__init__()
        check_image_shape(channels, image_size)
        pad = same_padding(kernel_size)
        sizes = halvings(image_size, len(widths))[::-1]  # smallest first
        start = sizes[0]
        layers: list[nn.Module] = []
        if dense:
            linear = nn.Linear(latent_dim, widths[0] * start * start)
            init_for_activation(linear, activation)
            layers += [linear, make_activation(activation)]
        elif latent_dim != widths[0] * start * start:
            raise GenmodelsError(
                f"ConvDecoder without dense layer needs latent_dim = {widths[0]}x{start}x"
                f"{start} = {widths[0] * start * start} (the encoder's feature map), got "
                f"{latent_dim}."
            )
        layers.append(nn.Unflatten(1, (widths[0], start, start)))
        outs = [*widths[1:], channels]
        for i, (n_in, n_out) in enumerate(zip(widths, outs, strict=True)):
            is_output = i == len(widths) - 1
            # (in - 1) * 2 - 2 * pad + kernel_size + output_padding = target size
            output_padding = sizes[i + 1] - ((sizes[i] - 1) * 2 - 2 * pad + kernel_size)
            conv = nn.ConvTranspose2d(n_in, n_out, kernel_size, stride=2, padding=pad,
                                      output_padding=output_padding)
            layers.append(conv)
            if not is_output:
                init_for_activation(conv, activation)
                layers.append(make_activation(activation))
        self.net = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z)
