"""Style-based generator (Karras et al., "A Style-Based Generator Architecture for
Generative Adversarial Networks", CVPR 2019).

z -> mapping MLP -> w; synthesis starts from a learned constant 4x4 tensor and doubles the
resolution per block; after every conv, per-pixel noise scaled by learned per-channel
factors is added, then AdaIN sets each channel's scale and bias from an affine transform
of w. Style mixing regularization (sec. 3.1): during training a share of the images use a
second coding w2 from a random layer on. Truncation trick (sec. 4.1 and fig. 8): the
average w is tracked over training, and samples may be drawn at w' = w_avg + psi (w - w_avg).
Images whose size is not a power of two are made at the next power of two and
center-cropped. (No progressive growing here: train it with the usual discriminators, e.g.
ProGANDiscriminator at full stage.)
"""


import torch
import torch.nn.functional as F
from torch import nn

from genmodels.errors import GenmodelsError
from genmodels.nn.layers import make_activation
from genmodels.nn.progan import (
    EqualizedConv2d,
    EqualizedLinear,
    PixelNorm,
    resolutions,
    stage_widths,
)


class MappingNetwork(nn.Sequential):
    """z -> normalised -> `layers` dense layers with LeakyReLU -> w (lr multiplier 0.01)."""

    def __init__(self, latent_dim: int, w_dim: int, layers: int = 8,
                 lr_multiplier: float = 0.01):
        modules: list[nn.Module] = [PixelNorm()]
        for i in range(layers):
            modules += [EqualizedLinear(latent_dim if i == 0 else w_dim, w_dim,
                                        lr_multiplier=lr_multiplier),
                        make_activation("leaky_relu")]
        super().__init__(*modules)


class NoiseInput(nn.Module):
    """Adds single-channel Gaussian noise, scaled per channel by learned factors (init 0).
    The noise comes from the global RNG: `GAN.sample(generator=g)` seeds it from g."""

    def __init__(self, channels: int):
        super().__init__()
        self.scale = nn.Parameter(torch.zeros(1, channels, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        noise = torch.randn(len(x), 1, *x.shape[2:], device=x.device, dtype=x.dtype)
        return x + self.scale * noise


class AdaIN(nn.Module):
    """Adaptive instance normalization: instance-normalise each channel, then scale and
    shift it by y = A(w), a learned affine map of the style (eq. 1)."""

    def __init__(self, channels: int, w_dim: int):
        super().__init__()
        self.scale = EqualizedLinear(w_dim, channels, gain=1.0, bias_init=1.0)
        self.shift = EqualizedLinear(w_dim, channels, gain=1.0)

    def forward(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        scale, shift = self.scale(w)[:, :, None, None], self.shift(w)[:, :, None, None]
        return F.instance_norm(x) * scale + shift


class StyleLayer(nn.Module):
    """(conv) -> noise -> LeakyReLU -> AdaIN(w): one style input of the synthesis network."""

    def __init__(self, n_in: int, n_out: int, w_dim: int, conv: bool = True):
        super().__init__()
        self.conv = EqualizedConv2d(n_in, n_out, 3) if conv else nn.Identity()
        self.noise = NoiseInput(n_out)
        self.activation = make_activation("leaky_relu")
        self.adain = AdaIN(n_out, w_dim)

    def forward(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        return self.adain(self.activation(self.noise(self.conv(x))), w)


class StyleGANGenerator(nn.Module):
    """`label_dims`: the last label_dims inputs of z are a condition, not noise (set by
    ConditionalGenerator to its one-hot label), so style mixing's second z keeps them.
    `w_avg_beta`: decay of the moving average of w used by the truncation trick (the
    official implementation's 0.995 per training forward pass)."""

    def __init__(self, latent_dim: int, channels: int, image_size: int,
                 w_dim: int | None = None, mapping_layers: int = 8, feature_base: int = 4096,
                 max_width: int = 256, min_width: int = 16, mixing_prob: float = 0.9,
                 output_activation: str = "tanh", label_dims: int = 0,
                 w_avg_beta: float = 0.995):
        super().__init__()
        if not 0.0 <= mixing_prob <= 1.0:
            raise GenmodelsError(f"mixing_prob must be in [0, 1], got {mixing_prob!r}.")
        if not 0 <= label_dims < latent_dim:
            raise GenmodelsError(f"label_dims must be in [0, latent_dim={latent_dim}), got "
                                 f"{label_dims!r}.")
        widths = stage_widths(image_size, feature_base, max_width, min_width)
        self.image_size, self.padded_size = image_size, resolutions(image_size)[-1]
        w_dim = w_dim or latent_dim
        self.mixing_prob, self.label_dims, self.w_avg_beta = mixing_prob, label_dims, w_avg_beta
        self.mapping = MappingNetwork(latent_dim, w_dim, mapping_layers)
        self.register_buffer("w_avg", torch.zeros(w_dim))
        self.constant = nn.Parameter(torch.ones(1, widths[0], 4, 4))
        layers = [StyleLayer(widths[0], widths[0], w_dim, conv=False),
                  StyleLayer(widths[0], widths[0], w_dim)]
        for n_in, n_out in zip(widths[:-1], widths[1:], strict=True):
            layers += [StyleLayer(n_in, n_out, w_dim), StyleLayer(n_out, n_out, w_dim)]
        self.layers = nn.ModuleList(layers)
        self.to_rgb = EqualizedConv2d(widths[-1], channels, 1, gain=1.0)
        self.output_activation = make_activation(output_activation)

    @property
    def num_styles(self) -> int:
        return len(self.layers)

    def styles(self, z: torch.Tensor, truncation: float = 1.0) -> torch.Tensor:
        """One w per style layer, (N, num_styles, w_dim). In training, w_avg tracks the
        mean w, and with probability `mixing_prob` an image switches to the coding of a
        second z at a random layer. truncation psi: w' = w_avg + psi (w - w_avg)."""
        w = self.mapping(z)
        if self.training:
            with torch.no_grad():
                self.w_avg.lerp_(w.detach().mean(0).to(self.w_avg.dtype), 1 - self.w_avg_beta)
        w = w[:, None].expand(-1, self.num_styles, -1)
        if self.training and self.mixing_prob > 0:
            w = self.mix(z, w)
        if truncation != 1.0:
            w = torch.lerp(self.w_avg.to(w.dtype), w, truncation)
        return w

    def mix(self, z: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        """Style mixing regularization (sec. 3.1): the noise part of a second z (a label
        part is kept) mapped to w2, used from a random crossover layer on."""
        noise_dims = z.shape[1] - self.label_dims
        z2 = torch.cat([torch.randn_like(z[:, :noise_dims]), z[:, noise_dims:]], dim=1)
        w2 = self.mapping(z2)[:, None]
        n = len(z)
        crossover = torch.randint(1, self.num_styles, (n, 1), device=z.device)
        mixed = torch.rand(n, 1, device=z.device) < self.mixing_prob
        use_second = (torch.arange(self.num_styles, device=z.device) >= crossover) & mixed
        return torch.where(use_second[..., None], w2, w)

    def synthesis(self, styles: torch.Tensor) -> torch.Tensor:
        x = self.constant.expand(len(styles), -1, -1, -1).to(styles.dtype)
        for i, layer in enumerate(self.layers):
            if i >= 2 and i % 2 == 0:  # each resolution after 4x4 starts by upsampling
                x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
            x = layer(x, styles[:, i])
        out = self.output_activation(self.to_rgb(x))
        crop = (self.padded_size - self.image_size) // 2
        return out[..., crop: crop + self.image_size, crop: crop + self.image_size]

    def forward(self, z: torch.Tensor, truncation: float = 1.0) -> torch.Tensor:
        return self.synthesis(self.styles(z, truncation))


