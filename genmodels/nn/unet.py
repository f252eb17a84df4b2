"""The U-Net that predicts noise in DDPM (Ho et al., "Denoising Diffusion Probabilistic
Models", 2020, appendix B; after the PixelCNN++ / Wide ResNet U-Net they cite).

Levels of `widths` channels at halving resolutions, `num_res_blocks` residual blocks each,
self-attention at chosen resolutions and in the middle, skip connections from every block
of the way down to the way up. The timestep enters every residual block through a
sinusoidal embedding and an MLP; a class label (classifier-free guidance, Ho & Salimans,
2022) is one more learned embedding added to the timestep's.
"""

import math

import torch
import torch.nn.functional as F
from torch import nn

from genmodels.config import check_whole_number
from genmodels.errors import GenmodelsError
from genmodels.nn.layers import Conv2d


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding of timesteps t (N,) into (N, dim): [sin(t w_k), cos(t w_k)] with
    frequencies w_k = max_period^(-k / (dim/2)), k = 0 .. dim/2 - 1, the Transformer's
    position encoding (Vaswani et al., 2017, sec. 3.5) as DDPM uses it."""
    half = dim // 2
    frequencies = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device) / half)
    angles = t.float()[:, None] * frequencies[None]
    embedding = torch.cat([torch.sin(angles), torch.cos(angles)], dim=1)
    return F.pad(embedding, (0, dim % 2))  # an odd dim gets one zero column


def zero_initialized(module: nn.Module) -> nn.Module:
    """The module with its weights and bias at zero: a residual branch that starts as the
    identity (the last conv of each block and of the network, as in Ho et al.'s code)."""
    for parameter in module.parameters():
        nn.init.zeros_(parameter)
    return module


class ResidualBlock(nn.Module):
    """GroupNorm -> SiLU -> conv3x3, plus the projected time embedding per channel, then
    GroupNorm -> SiLU -> dropout -> conv3x3, added to the input (1x1 conv when the width
    changes)."""

    def __init__(self, in_channels: int, out_channels: int, embedding_dim: int,
                 dropout: float, norm_groups: int):
        super().__init__()
        self.norm1 = nn.GroupNorm(norm_groups, in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.embedding = nn.Linear(embedding_dim, out_channels)
        self.norm2 = nn.GroupNorm(norm_groups, out_channels)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = zero_initialized(nn.Conv2d(out_channels, out_channels, 3, padding=1))
        self.skip = (nn.Identity() if in_channels == out_channels
                     else nn.Conv2d(in_channels, out_channels, 1))

    def forward(self, x: torch.Tensor, embedding: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.embedding(F.silu(embedding))[:, :, None, None]
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        return self.skip(x) + h


class SelfAttention(nn.Module):
    """Single-head self-attention over the pixels of a feature map, as a residual block:
    x + proj(softmax(q k^T / sqrt(C)) v), with q, k, v 1x1 convs of the group-normed x."""

    def __init__(self, channels: int, norm_groups: int):
        super().__init__()
        self.norm = nn.GroupNorm(norm_groups, channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj = zero_initialized(nn.Conv2d(channels, channels, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        q, k, v = self.qkv(self.norm(x)).flatten(2).transpose(1, 2).chunk(3, dim=2)  # (N, HW, C)
        attended = F.scaled_dot_product_attention(q, k, v)
        return x + self.proj(attended.transpose(1, 2).reshape(n, c, h, w))


class Downsample(nn.Module):
    """A stride-2 conv3x3: side s -> ceil(s / 2) (28 -> 14 -> 7 -> 4)."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class Upsample(nn.Module):
    """Nearest-neighbour upsampling to the side of the matching skip connection (twice the
    side, less one where the way down rounded an odd side up), then a conv3x3."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        return self.conv(F.interpolate(x, size=size, mode="nearest"))


class UNet(nn.Module):
    """eps_theta(x_t, t[, y]) of DDPM: images (N, channels, image_size, image_size), integer
    timesteps (N,) and, with `num_classes`, labels (N,) -> an output shaped like the images.

    - `widths`: channels of each level; level k has side ceil(image_size / 2^k), so any
      size works (28 -> 14 -> 7 for widths of three levels).
    - `num_res_blocks` residual blocks per level on the way down (num_res_blocks + 1 on the
      way up, one per skip connection), with `dropout` inside each.
    - `attention_resolutions`: the sides of the levels that get self-attention after each
      residual block, e.g. [16] for 32x32 images as in Ho et al.; null: the lowest level
      only; []: none. The middle (res, attention, res) always has it.
    - `norm_groups`: the groups of every group norm, each of at least 2 channels (Ho et
      al.: 32); the time embedding lives in the differences between a group's channels.
    - `num_classes`: a learned label embedding is added to the time embedding; label
      index `num_classes` is the null label of classifier-free guidance (dropped labels).
    """

    def __init__(self, channels: int, image_size: int, widths: list[int],
                 num_res_blocks: int = 2, attention_resolutions: list[int] | None = None,
                 dropout: float = 0.1, num_classes: int | None = None, norm_groups: int = 8,
                 embedding_multiplier: int = 4):
        super().__init__()
        widths = list(widths)
        check_whole_number("model.network.num_res_blocks", num_res_blocks, 1)
        if not widths or any(type(w) is not int or w < 1 for w in widths):
            raise GenmodelsError(f"model.network.widths must be a non-empty list of positive "
                                 f"whole numbers, got {widths}.")
        if not 0 <= dropout < 1:
            raise GenmodelsError(f"model.network.dropout must be in [0, 1), got {dropout!r}.")
        if any(w % norm_groups or w // norm_groups < 2 for w in widths):
            # One channel per group normalizes each channel alone, which erases the time
            # embedding: it is one constant per channel, added just before a group norm.
            raise GenmodelsError(f"Each of model.network.widths={widths} must be divisible by "
                                 f"model.network.norm_groups={norm_groups} (group norm) into "
                                 f"groups of at least 2 channels.")
        if num_classes is not None:
            check_whole_number("model.num_classes", num_classes, 2)
        self.sides = [image_size]  # the side of each level's feature maps
        for _ in widths[1:]:
            self.sides.append(-(-self.sides[-1] // 2))
        if attention_resolutions is None:
            attention_resolutions = [self.sides[-1]]
        attention_resolutions = list(attention_resolutions)
        unknown = [side for side in attention_resolutions if side not in self.sides]
        if unknown:
            raise GenmodelsError(
                f"model.network.attention_resolutions={attention_resolutions}: no level has "
                f"side {unknown}; this U-Net's levels have sides {self.sides} (for "
                f"image_size={image_size} and {len(widths)} widths); null: the lowest.")
        self.channels, self.image_size, self.num_classes = channels, image_size, num_classes
        self.attention_resolutions = attention_resolutions

        self.time_dim = widths[0]
        embedding_dim = embedding_multiplier * widths[0]
        self.time_mlp = nn.Sequential(nn.Linear(self.time_dim, embedding_dim), nn.SiLU(),
                                      nn.Linear(embedding_dim, embedding_dim))
        # One more row than classes: the null label of classifier-free guidance.
        self.label_embedding = (nn.Embedding(num_classes + 1, embedding_dim)
                                if num_classes is not None else None)

        def block(in_width: int, out_width: int) -> ResidualBlock:
            return ResidualBlock(in_width, out_width, embedding_dim, dropout, norm_groups)

        def attention(width: int, side: int) -> nn.Module:
            return (SelfAttention(width, norm_groups) if side in attention_resolutions
                    else nn.Identity())

        self.conv_in = Conv2d(channels, widths[0], 3, padding=1)
        # The way down: each block's output (and each downsampling's) is a skip connection.
        self.down_blocks, self.down_attention = nn.ModuleList(), nn.ModuleList()
        self.downsample = nn.ModuleList()
        skip_widths, width = [widths[0]], widths[0]
        for level, (level_width, side) in enumerate(zip(widths, self.sides, strict=True)):
            for _ in range(num_res_blocks):
                self.down_blocks.append(block(width, level_width))
                self.down_attention.append(attention(level_width, side))
                width = level_width
                skip_widths.append(width)
            if level < len(widths) - 1:
                self.downsample.append(Downsample(width))
                skip_widths.append(width)
        self.middle = nn.ModuleList([block(width, width), SelfAttention(width, norm_groups),
                                     block(width, width)])
        # The way up: one block per skip connection, taking it concatenated.
        self.up_blocks, self.up_attention = nn.ModuleList(), nn.ModuleList()
        self.upsample = nn.ModuleList()
        for level in reversed(range(len(widths))):
            for _ in range(num_res_blocks + 1):
                self.up_blocks.append(block(width + skip_widths.pop(), widths[level]))
                self.up_attention.append(attention(widths[level], self.sides[level]))
                width = widths[level]
            if level > 0:
                self.upsample.append(Upsample(width))
        self.norm_out = nn.GroupNorm(norm_groups, width)
        self.conv_out = zero_initialized(Conv2d(width, channels, 3, padding=1))
        self.num_res_blocks, self.levels = num_res_blocks, len(widths)

    def embed(self, t: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        """The embedding every residual block receives: MLP(sinusoid(t)) [+ embedding(y)]."""
        embedding = self.time_mlp(timestep_embedding(t, self.time_dim))
        if self.label_embedding is None:
            if labels is not None:
                raise GenmodelsError("labels were given to a U-Net without num_classes.")
            return embedding
        if labels is None:
            raise GenmodelsError("This U-Net is class-conditional (num_classes is set): give "
                                 f"labels, {self.num_classes} for the null label.")
        return embedding + self.label_embedding(labels)

    def forward(self, x: torch.Tensor, t: torch.Tensor,
                labels: torch.Tensor | None = None) -> torch.Tensor:
        embedding = self.embed(t, labels)
        h = self.conv_in(x)
        skips = [h]
        blocks = iter(zip(self.down_blocks, self.down_attention, strict=True))
        for level in range(self.levels):
            for _ in range(self.num_res_blocks):
                res_block, attend = next(blocks)
                h = attend(res_block(h, embedding))
                skips.append(h)
            if level < self.levels - 1:
                h = self.downsample[level](h)
                skips.append(h)
        h = self.middle[2](self.middle[1](self.middle[0](h, embedding)), embedding)
        blocks = iter(zip(self.up_blocks, self.up_attention, strict=True))
        for up_index, level in enumerate(reversed(range(self.levels))):
            for _ in range(self.num_res_blocks + 1):
                res_block, attend = next(blocks)
                h = attend(res_block(torch.cat([h, skips.pop()], dim=1), embedding))
            if level > 0:
                h = self.upsample[up_index](h, size=skips[-1].shape[-2:])
        return self.conv_out(F.silu(self.norm_out(h)))
