"""Convolutional networks: DCGAN generators and discriminators; encoders and decoders.

Every spatial size is derived from the configured image size, so the same config trains
at 28x28, 32x32 or 64x64.
"""

import torch
from torch import nn

from genmodels.errors import GenmodelsError
from genmodels.nn.dense import mlp
from genmodels.nn.gan_layers import MinibatchStdDev, batch_statistics_head
from genmodels.nn.layers import (
    Conv2d,
    ConvTranspose2d,
    Dropout,
    apply_init,
    check_image_shape,
    init_for_activation,
    make_activation,
)


def same_padding(kernel_size: int) -> int:
    if kernel_size % 2 == 0:
        raise GenmodelsError(f"kernel_size must be odd, got {kernel_size!r}.")
    return kernel_size // 2


def start_size(image_size: int, num_doublings: int, network: str) -> int:
    """The feature-map size from which `num_doublings` size doublings reach image_size."""
    factor = 2**num_doublings
    if image_size % factor:
        raise GenmodelsError(
            f"{network} with {num_doublings} upsampling layers needs image_size divisible"
            f" by {factor}, got {image_size}; valid sizes include"
            f" {', '.join(str(factor * k) for k in (4, 7, 8, 16))}."
        )
    return image_size // factor


BATCH_NORM_ORDERS = ("before_activation", "after_activation")


class DCGANGenerator(nn.Module):
    """z -> dense -> (widths[0], s, s) -> stride-2 transposed convs -> image.

    Each transposed conv doubles the size, so s = image_size / 2**len(widths). Batch norm
    follows the reshape and every hidden transposed conv; the output layer has none.
    `batch_norm_order`:
      - "before_activation": the DCGAN paper's blocks (Radford et al., 2016; its code):
        project -> BN -> activation, then transposed conv -> BN -> activation;
      - "after_activation": Geron's Keras DCGAN (Hands-On ML, ch. 17): the projection
        stays linear (Dense -> BN) and each transposed conv carries its activation, then BN.
    Without batch norm, the projection takes the activation in the paper's order only.
    `batch_norm_momentum`/`batch_norm_eps` are PyTorch's (Keras' momentum 0.99 is 0.01
    here); `init`: "torch" or "glorot" (Keras, see `apply_init`).
    """

    def __init__(self, latent_dim: int, channels: int, image_size: int,
                 widths: list[int] = (128, 64), kernel_size: int = 5,
                 activation: str = "selu", output_activation: str = "tanh",
                 batch_norm: bool = True, batch_norm_momentum: float = 0.1,
                 batch_norm_eps: float = 1e-5, init: str = "torch",
                 batch_norm_order: str = "after_activation"):
        super().__init__()
        check_image_shape(channels, image_size)
        if batch_norm_order not in BATCH_NORM_ORDERS:
            raise GenmodelsError(f"Unknown batch_norm_order {batch_norm_order!r}; valid "
                                 f"choices: {', '.join(BATCH_NORM_ORDERS)}.")
        start = start_size(image_size, len(widths), "DCGANGenerator")
        pad = same_padding(kernel_size)
        paper_order = batch_norm_order == "before_activation"

        def norm(width: int) -> list[nn.Module]:
            if not batch_norm:
                return []
            return [nn.BatchNorm2d(width, eps=batch_norm_eps, momentum=batch_norm_momentum)]

        projection = nn.Linear(latent_dim, widths[0] * start * start)
        layers: list[nn.Module] = [projection, nn.Unflatten(1, (widths[0], start, start)),
                                   *norm(widths[0])]
        if paper_order:
            init_for_activation(projection, activation)
            layers.append(make_activation(activation))
        for i, (n_in, n_out) in enumerate(zip(widths, [*widths[1:], channels], strict=True)):
            is_output = i == len(widths) - 1
            act = output_activation if is_output else activation
            conv = ConvTranspose2d(n_in, n_out, kernel_size, stride=2, padding=pad,
                                      output_padding=1)
            init_for_activation(conv, act)
            block = [conv, make_activation(act)] if is_output else (
                [conv, *norm(n_out), make_activation(act)] if paper_order
                else [conv, make_activation(act), *norm(n_out)])
            layers += block
        self.net = apply_init(nn.Sequential(*layers), init)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z)


class UpsampleGenerator(nn.Module):
    """z -> dense -> (widths[0], s, s) -> [nearest upsample x2 -> conv] per width -> conv to
    the image's channels (kernel `output_kernel_size`).

    Upsampling followed by a stride-1 conv avoids the checkerboard artefacts of strided
    transposed convs (Odena et al., 2016). s = image_size / 2**len(widths).
    """

    def __init__(self, latent_dim: int, channels: int, image_size: int,
                 widths: list[int] = (128, 128), kernel_size: int = 3,
                 activation: str = "leaky_relu", output_kernel_size: int = 7,
                 output_activation: str = "sigmoid"):
        super().__init__()
        check_image_shape(channels, image_size)
        start = start_size(image_size, len(widths), "UpsampleGenerator")
        layers: list[nn.Module] = [nn.Linear(latent_dim, widths[0] * start * start),
                                   make_activation(activation),
                                   nn.Unflatten(1, (widths[0], start, start))]
        for n_in, n_out in zip(widths, widths, strict=True):
            layers += [nn.Upsample(scale_factor=2, mode="nearest"),
                       Conv2d(n_in, n_out, kernel_size, padding=same_padding(kernel_size)),
                       make_activation(activation)]
        layers += [Conv2d(widths[-1], channels, output_kernel_size,
                             padding=same_padding(output_kernel_size)),
                   make_activation(output_activation)]
        self.net = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z)


class DCGANDiscriminator(nn.Module):
    """image -> stride-2 convs (activation, dropout) -> flatten -> one logit per image.

    `batch_norm` adds batch norm after every conv but the first (the DCGAN guidelines);
    `minibatch_stddev` appends the batch-variation channel before the flatten and
    `minibatch_kernels` (> 0) adds minibatch discrimination before the final dense layer.
    `init`: "torch" or "glorot" (Keras, see `apply_init`).
    """

    def __init__(self, channels: int, image_size: int, widths: list[int] = (64, 128),
                 kernel_size: int = 5, activation: str = "leaky_relu", dropout: float = 0.4,
                 batch_norm: bool = False, minibatch_stddev: bool = False,
                 minibatch_kernels: int = 0, init: str = "torch"):
        super().__init__()
        check_image_shape(channels, image_size, any_channels=True)
        pad = same_padding(kernel_size)
        layers: list[nn.Module] = []
        size = image_size
        for i, (n_in, n_out) in enumerate(zip([channels, *widths[:-1]], widths, strict=True)):
            layers.append(Conv2d(n_in, n_out, kernel_size, stride=2, padding=pad))
            if batch_norm and i > 0:
                layers.append(nn.BatchNorm2d(n_out))
            layers += [make_activation(activation), Dropout(dropout)]
            size = (size - 1) // 2 + 1  # ceil(size / 2) for a 'same'-padded stride-2 conv
        if minibatch_stddev:
            layers.append(MinibatchStdDev())
        head, width = batch_statistics_head((widths[-1] + minibatch_stddev) * size * size,
                                            minibatch_kernels)
        layers += [nn.Flatten(), head, nn.Linear(width, 1)]
        self.net = apply_init(nn.Sequential(*layers), init)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).squeeze(1)


# ---------------------------------------------------------------------------------------
# Convolutional encoders and decoders (autoencoders and VAEs)
# ---------------------------------------------------------------------------------------

ENCODER_BLOCKS = ("strided", "double", "pool")
DECODER_BLOCKS = ("strided", "double")


def padded_size(image_size: int, num_stages: int) -> int:
    """The smallest size >= image_size that `num_stages` halvings divide (28 -> 32 for 3)."""
    factor = 2**num_stages
    return -(-image_size // factor) * factor


def check_block(block: str, choices: tuple[str, ...]) -> None:
    if block not in choices:
        raise GenmodelsError(f"Unknown conv block {block!r}; valid choices: {choices}.")


def conv_unit(n_in: int, n_out: int, kernel_size: int, activation: str, batch_norm: bool,
              stride: int = 1, transposed: bool = False) -> list[nn.Module]:
    """conv -> activation -> (batch norm): one 'same'-padded conv, or a stride-2 one that
    halves (transposed: doubles) the size."""
    pad = same_padding(kernel_size)
    if transposed:
        conv = ConvTranspose2d(n_in, n_out, kernel_size, stride=stride, padding=pad,
                                  output_padding=stride - 1)
    else:
        conv = Conv2d(n_in, n_out, kernel_size, stride=stride, padding=pad)
    init_for_activation(conv, activation)
    return [conv, make_activation(activation), *([nn.BatchNorm2d(n_out)] if batch_norm else [])]


class ConvEncoder(nn.Module):
    """Image -> conv stages that each halve the size -> flatten -> optional dense layers.

    block="strided": one stride-2 conv per stage (Foster's VAE, DCGAN-style encoders);
    block="double": two 'same' convs then 2x2 max pooling per stage (VGG/U-Net style);
    block="pool": one 'same' conv then 2x2 max pooling per stage (Geron's conv autoencoder).
    Each conv is followed by `activation` and, with `batch_norm`, batch norm. Images whose
    size the stages do not divide are zero-padded (centred) first, e.g. 28x28 -> 32x32 for
    three stages; `ConvDecoder` crops its output back the same way. The output is the flat
    feature vector from which an autoencoder's codings or a VAE's posterior are computed.
    """

    def __init__(self, channels: int, image_size: int, widths: list[int] = (32, 64, 128),
                 kernel_size: int = 3, activation: str = "relu", batch_norm: bool = False,
                 block: str = "strided", dense_sizes: list[int] = (),
                 out_features: int | None = None, out_activation: str | None = None):
        super().__init__()
        check_image_shape(channels, image_size)
        check_block(block, ENCODER_BLOCKS)
        if not widths:
            raise GenmodelsError("ConvEncoder needs at least one width (conv stage).")
        size = padded_size(image_size, len(widths))
        self.pad = (size - image_size) // 2, size - image_size - (size - image_size) // 2
        layers: list[nn.Module] = []
        for n_in, n_out in zip([channels, *widths[:-1]], widths, strict=True):
            if block == "strided":
                layers += conv_unit(n_in, n_out, kernel_size, activation, batch_norm, stride=2)
            elif block == "pool":
                layers += conv_unit(n_in, n_out, kernel_size, activation, batch_norm)
                layers.append(nn.MaxPool2d(2))
            else:
                layers += conv_unit(n_in, n_out, kernel_size, activation, batch_norm)
                layers += conv_unit(n_out, n_out, kernel_size, activation, batch_norm)
                layers.append(nn.MaxPool2d(2))
        layers.append(nn.Flatten())
        flat = widths[-1] * (size // 2 ** len(widths)) ** 2
        sizes = [flat, *dense_sizes, *([out_features] if out_features else [])]
        if len(sizes) > 1:
            layers.append(mlp(sizes, activation, out_activation if out_features else activation))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if any(self.pad):
            low, high = self.pad
            x = nn.functional.pad(x, (low, high, low, high))
        return self.net(x)


class ConvDecoder(nn.Module):
    """Codings -> optional dense layers -> dense to (widths[0], s, s) -> upsampling stages
    -> a 'same' conv to the image channels (raw output: logits or Gaussian means).

    Stage i doubles the size and outputs widths[i] channels, so s = image_size / 2**stages
    (rounded up; the output is centre-cropped to image_size, mirroring `ConvEncoder`'s
    padding). block="strided": a stride-2 transposed conv per stage; block="double":
    nearest-neighbour upsampling then two 'same' convs. Listing the encoder's widths in
    reverse gives its mirror image.
    """

    def __init__(self, latent_dim: int, channels: int, image_size: int,
                 widths: list[int] = (128, 64, 32), kernel_size: int = 3,
                 activation: str = "relu", batch_norm: bool = False, block: str = "strided",
                 dense_sizes: list[int] = (), output_kernel_size: int | None = None):
        super().__init__()
        check_image_shape(channels, image_size)
        check_block(block, DECODER_BLOCKS)
        if not widths:
            raise GenmodelsError("ConvDecoder needs at least one width (upsampling stage).")
        size = padded_size(image_size, len(widths))
        self.image_size = image_size
        start = size // 2 ** len(widths)
        layers: list[nn.Module] = [
            mlp([latent_dim, *dense_sizes, widths[0] * start * start], activation, activation),
            nn.Unflatten(1, (widths[0], start, start)),
        ]
        for n_in, n_out in zip([widths[0], *widths[:-1]], widths, strict=True):
            if block == "strided":
                layers += conv_unit(n_in, n_out, kernel_size, activation, batch_norm, stride=2,
                                    transposed=True)
            else:
                layers.append(nn.Upsample(scale_factor=2))
                layers += conv_unit(n_in, n_out, kernel_size, activation, batch_norm)
                layers += conv_unit(n_out, n_out, kernel_size, activation, batch_norm)
        output_kernel = output_kernel_size or kernel_size
        layers.append(Conv2d(widths[-1], channels, output_kernel,
                                padding=same_padding(output_kernel)))
        self.net = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        out = self.net(z)
        if out.shape[-1] != self.image_size:
            low = (out.shape[-1] - self.image_size) // 2
            out = out[..., low : low + self.image_size, low : low + self.image_size]
        return out
