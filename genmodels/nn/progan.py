"""Progressive growing of GANs (Karras et al., "Progressive Growing of GANs for Improved
Quality, Stability, and Variation", ICLR 2018).

G and D hold a block for every resolution 4x4, 8x8, ... up to the image size (rounded up
to a power of two: 28x28 images are made at 32x32 and center-cropped). `set_stage(stage,
alpha)` chooses how many blocks run; the newest block is faded in: its output is blended
with the upsampled (G) or downsampled (D) output of the previous stage, with weight alpha
going from 0 to 1. G always returns full-size images (nearest-neighbour upsampled from
the current resolution) and D accepts full-size images (average-pooled to it), so the
GAN model and the data need no resolution logic of their own.
"""

import logging
import math

import torch
import torch.nn.functional as F
from torch import nn

from genmodels.errors import GenmodelsError
from genmodels.nn.gan_layers import MinibatchStdDev
from genmodels.nn.layers import check_image_shape, make_activation

log = logging.getLogger(__name__)


class EqualizedLinear(nn.Module):
    """Dense layer with the equalized learning rate (sec. 4.1): weights drawn from N(0, 1)
    and multiplied at run time by the He constant gain / sqrt(fan_in), so that Adam's
    per-weight step sizes act alike on every layer. `lr_multiplier` slows a layer down
    (StyleGAN's mapping network uses 0.01)."""

    def __init__(self, in_features: int, out_features: int, gain: float = math.sqrt(2),
                 lr_multiplier: float = 1.0, bias_init: float = 0.0):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_features, in_features) / lr_multiplier)
        self.bias = nn.Parameter(torch.full((out_features,), bias_init / lr_multiplier))
        self.scale = gain / math.sqrt(in_features) * lr_multiplier
        self.lr_multiplier = lr_multiplier

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight * self.scale, self.bias * self.lr_multiplier)


class EqualizedConv2d(nn.Module):
    """'Same'-padded convolution with the equalized learning rate (see EqualizedLinear)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int,
                 gain: float = math.sqrt(2)):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, kernel_size,
                                               kernel_size))
        self.bias = nn.Parameter(torch.zeros(out_channels))
        self.scale = gain / math.sqrt(in_channels * kernel_size * kernel_size)
        self.padding = kernel_size // 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.weight * self.scale, self.bias, padding=self.padding)


class PixelNorm(nn.Module):
    """Pixelwise feature normalization (sec. 4.2): each pixel's feature vector is scaled
    to unit root-mean-square."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.rsqrt(x.square().mean(dim=1, keepdim=True) + 1e-8)


def resolutions(image_size: int) -> list[int]:
    """4, 8, ..., up to image_size rounded up to a power of two."""
    check_image_shape(1, image_size)
    top = 2 ** math.ceil(math.log2(image_size))
    return [4 * 2**s for s in range(int(math.log2(top)) - 1)]


def stage_widths(image_size: int, feature_base: int, max_width: int, min_width: int):
    """Channels per resolution: feature_base / resolution, clamped (the paper's schedule
    with feature_base 8192, max_width 512)."""
    return [min(max_width, max(min_width, feature_base // r)) for r in resolutions(image_size)]


def conv_block(n_in: int, n_out: int, pixel_norm: bool) -> list[nn.Module]:
    return [EqualizedConv2d(n_in, n_out, 3), make_activation("leaky_relu"),
            PixelNorm() if pixel_norm else nn.Identity()]


class Progressive(nn.Module):
    """The stage (index of the highest active resolution) and fade-in alpha, kept in a
    buffer so that checkpoints restore them."""

    def init_stages(self, image_size: int, num_stages: int) -> None:
        self.image_size, self.num_stages = image_size, num_stages
        self.padded_size = 4 * 2 ** (num_stages - 1)
        self.register_buffer("stage_alpha", torch.tensor([num_stages - 1, 1.0]))
        self.stage, self.alpha = num_stages - 1, 1.0  # full size until a schedule says not
        self.register_load_state_dict_post_hook(lambda module, keys: module.read_stage())

    def set_stage(self, stage: int, alpha: float) -> None:
        if stage >= self.num_stages:  # the schedule ran past the top resolution: stay there
            stage, alpha = self.num_stages - 1, 1.0
        if (stage, alpha) != (self.stage, self.alpha):
            self.stage, self.alpha = stage, float(alpha)
            self.stage_alpha[0], self.stage_alpha[1] = stage, alpha  # in place: no host copy

    def read_stage(self) -> None:
        self.stage, self.alpha = int(self.stage_alpha[0]), float(self.stage_alpha[1])

    @property
    def resolution(self) -> int:
        return 4 * 2**self.stage


class ProGANGenerator(Progressive):
    def __init__(self, latent_dim: int, channels: int, image_size: int,
                 feature_base: int = 4096, max_width: int = 256, min_width: int = 16,
                 output_activation: str = "tanh"):
        super().__init__()
        check_image_shape(channels, image_size)
        widths = stage_widths(image_size, feature_base, max_width, min_width)
        self.init_stages(image_size, len(widths))
        self.first = nn.Sequential(
            PixelNorm(), EqualizedLinear(latent_dim, widths[0] * 16, gain=math.sqrt(2) / 4),
            nn.Unflatten(1, (widths[0], 4, 4)), make_activation("leaky_relu"), PixelNorm(),
            *conv_block(widths[0], widths[0], pixel_norm=True))
        self.blocks = nn.ModuleList([nn.Identity()] + [
            nn.Sequential(nn.Upsample(scale_factor=2, mode="nearest"),
                          *conv_block(n_in, n_out, True), *conv_block(n_out, n_out, True))
            for n_in, n_out in zip(widths[:-1], widths[1:], strict=True)])
        self.to_rgb = nn.ModuleList([EqualizedConv2d(w, channels, 1, gain=1.0) for w in widths])
        self.output_activation = make_activation(output_activation)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = previous = self.first(z)
        for stage in range(1, self.stage + 1):
            previous, h = h, self.blocks[stage](h)
        out = self.to_rgb[self.stage](h)
        if self.stage > 0 and self.alpha < 1:  # fade in the newest block
            old = F.interpolate(self.to_rgb[self.stage - 1](previous), scale_factor=2)
            # Under CUDA autocast the two paths can end in different dtypes (lerp refuses).
            out = torch.lerp(old.to(out.dtype), out, self.alpha)
        out = self.output_activation(out)
        if self.resolution < self.padded_size:
            out = F.interpolate(out, scale_factor=self.padded_size // self.resolution)
        crop = (self.padded_size - self.image_size) // 2
        return out[..., crop: crop + self.image_size, crop: crop + self.image_size]


class ProGANDiscriminator(Progressive):
    def __init__(self, channels: int, image_size: int, feature_base: int = 4096,
                 max_width: int = 256, min_width: int = 16, group_size: int = 4):
        super().__init__()
        check_image_shape(channels, image_size, any_channels=True)
        widths = stage_widths(image_size, feature_base, max_width, min_width)
        self.init_stages(image_size, len(widths))
        self.from_rgb = nn.ModuleList([
            nn.Sequential(EqualizedConv2d(channels, w, 1), make_activation("leaky_relu"))
            for w in widths])
        self.blocks = nn.ModuleList([nn.Identity()] + [
            nn.Sequential(*conv_block(n_out, n_out, False), *conv_block(n_out, n_in, False),
                          nn.AvgPool2d(2))
            for n_in, n_out in zip(widths[:-1], widths[1:], strict=True)])
        self.last = nn.Sequential(
            MinibatchStdDev(group_size), *conv_block(widths[0] + 1, widths[0], False),
            nn.Flatten(), EqualizedLinear(widths[0] * 16, widths[0]),
            make_activation("leaky_relu"), EqualizedLinear(widths[0], 1, gain=1.0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.image_size:
            raise GenmodelsError(f"ProGANDiscriminator expects {self.image_size}x"
                                 f"{self.image_size} images, got {tuple(x.shape[-2:])}.")
        pad = self.padded_size - self.image_size
        if pad:
            x = F.pad(x, (pad // 2, pad - pad // 2, pad // 2, pad - pad // 2), mode="replicate")
        if self.resolution < self.padded_size:
            x = F.avg_pool2d(x, self.padded_size // self.resolution)
        h = self.from_rgb[self.stage](x)
        if self.stage > 0:
            h = self.blocks[self.stage](h)
            if self.alpha < 1:  # fade in the newest block
                old = self.from_rgb[self.stage - 1](F.avg_pool2d(x, 2))
                h = torch.lerp(old.to(h.dtype), h, self.alpha)  # dtypes: see the generator
        for stage in range(self.stage - 1, 0, -1):
            h = self.blocks[stage](h)
        return self.last(h).squeeze(1)


def fade_real_images(images: torch.Tensor, stage: int, alpha: float) -> torch.Tensor:
    """Real images as the networks see them at `stage` (resolution 4 * 2**stage): reduced
    to that resolution and, during a fade-in, blended with the previous resolution by the
    same alpha (sec. A.1: "we interpolate between two resolutions of the real images,
    similar to how the generator output combines two resolutions"). Returned at the input
    size, nearest-neighbour upsampled and cropped exactly as ProGANGenerator's images."""
    size = images.shape[-1]
    padded = resolutions(size)[-1]
    resolution = 4 * 2**stage
    if resolution >= padded and alpha >= 1:
        return images
    pad = padded - size
    x = F.pad(images, (pad // 2, pad - pad // 2) * 2, mode="replicate") if pad else images
    if resolution < padded:
        x = F.avg_pool2d(x, padded // resolution)
    if stage > 0 and alpha < 1:
        x = torch.lerp(F.interpolate(F.avg_pool2d(x, 2), scale_factor=2), x, alpha)
    if resolution < padded:
        x = F.interpolate(x, scale_factor=padded // resolution)
    crop = pad // 2
    return x[..., crop: crop + size, crop: crop + size]


class GrowthSchedule:
    """When to grow: stage 0 (4x4) trains for `stable_images`; every later stage first
    fades its block in over `fade_images` (alpha 0 -> 1), then trains for `stable_images`.
    Images count real images shown to D, over all processes (the paper uses 800k for each
    phase, and equal phases). Left unset (null), both are fitted to the run at its first
    step (`fit_to_run`): the run's real images in 2 * stages - 1 equal phases, so that
    every run reaches its top resolution and trains there for its last phase."""

    def __init__(self, fade_images: int | None = None, stable_images: int | None = None):
        if (fade_images is None) != (stable_images is None):
            raise GenmodelsError(
                "Set both model.growth.fade_images and model.growth.stable_images, or "
                f"neither (null: fitted to the run's length); got {fade_images!r}, "
                f"{stable_images!r}.")
        if fade_images is not None and (fade_images < 1 or stable_images < 0):
            raise GenmodelsError("fade_images must be >= 1 and stable_images >= 0, got "
                                 f"{fade_images!r}, {stable_images!r}.")
        self.fade_images, self.stable_images = fade_images, stable_images

    @property
    def fitted(self) -> bool:
        return self.fade_images is not None

    def images_to_top(self, num_stages: int) -> int:
        """Real images until the top stage is fully faded in."""
        return (num_stages - 1) * (self.fade_images + self.stable_images)

    def fit_to_run(self, run_images: float, num_stages: int) -> None:
        """Unset phases: fitted to a run showing D `run_images` real images. Set ones: a
        warning when the run ends before the top stage (the paper's 800k per phase on a
        small dataset never leaves 4x4); not an error, since a run may be extended later
        (resume= with more epochs) and grow on."""
        if not self.fitted:
            if math.isinf(run_images):
                raise GenmodelsError(
                    "model.growth fits its phases to the run's length, but this run has "
                    "neither trainer.max_epochs nor trainer.max_steps: set one, or "
                    "model.growth.fade_images and model.growth.stable_images.")
            phase = max(1, int(run_images) // (2 * num_stages - 1))
            self.fade_images = self.stable_images = phase
            return
        if (needed := self.images_to_top(num_stages)) > run_images:
            stage, alpha = self.at(int(run_images))
            top, end = 4 * 2 ** (num_stages - 1), 4 * 2**stage
            log.warning(
                "model.growth reaches its top resolution (%dx%d) after %s real images, but "
                "this run shows D %s: it ends at %dx%d%s. Set model.growth.fade_images=null "
                "model.growth.stable_images=null to fit the phases to the run, or train %.1f "
                "times as long.", top, top, f"{needed:,}", f"{int(run_images):,}", end, end,
                f" (faded in to {alpha:.0%})" if alpha < 1 else "", needed / run_images)

    def at(self, images: int) -> tuple[int, float]:
        if not self.fitted:
            raise GenmodelsError("GrowthSchedule.at before fit_to_run: its phases are "
                                 "fitted to the run at the first training step.")
        if images < self.stable_images:
            return 0, 1.0
        stage, within = divmod(images - self.stable_images, self.fade_images + self.stable_images)
        return stage + 1, min(1.0, within / self.fade_images)

    def state_dict(self) -> dict:
        return {"fade_images": self.fade_images, "stable_images": self.stable_images}

    def load_state_dict(self, state: dict) -> None:
        """The phases a run used: a resumed (or extended) run keeps growing on them."""
        self.fade_images, self.stable_images = state["fade_images"], state["stable_images"]
