"""Small layers shared by every architecture."""

import math

import torch
import torch.nn.functional as F
from torch import nn

from genmodels.errors import GenmodelsError


class _ELUByExp(torch.autograd.Function):
    """scale * (x if x > 0 else alpha * (exp(x) - 1)), computed with exp: PyTorch's CPU
    ELU/SELU kernels call expm1, which is not vectorised there and runs 2x (AVX2) to 8x
    (AVX-512) slower than exp (AVX-512: 16 ms against 2 ms for a DCGAN generator's
    128x64x14x14 activations, one core).
    exp(x) - 1 differs from expm1(x) by at most ~1e-7 near 0. The gradient is PyTorch's
    own elu_backward, from the output as F.elu saves it (differentiable again, for
    gradient penalties)."""

    @staticmethod
    def forward(ctx, x, alpha: float, scale: float):
        # min(x, 0) is 0 where x > 0, and exp(0) - 1 = 0 there (torch.where is slow too)
        out = x.clamp(max=0).exp_().sub_(1).mul_(alpha * scale).add_(x.clamp(min=0), alpha=scale)
        ctx.save_for_backward(out)
        ctx.alpha, ctx.scale = alpha, scale
        return out

    @staticmethod
    def backward(ctx, grad):
        (out,) = ctx.saved_tensors
        return torch.ops.aten.elu_backward(grad, ctx.alpha, ctx.scale, 1.0, True, out), None, None


class ELU(nn.Module):
    """ELU (Clevert et al., 2016) and SELU (Klambauer et al., 2017: alpha 1.6733, scale
    1.0507): nn.ELU/nn.SELU's numbers, faster on CPUs for large activations (see
    _ELUByExp); on GPUs and for small activations PyTorch's."""

    SELU_ALPHA, SELU_SCALE = 1.6732632423543772, 1.0507009873554805
    # Below this many elements PyTorch's own kernel is faster: _ELUByExp's Python costs
    # ~80 us a call (forward and backward), a dense layer's whole ELU at batch 128.
    MIN_ELEMENTS_BY_EXP = 2**16

    def __init__(self, alpha: float = 1.0, scale: float = 1.0):
        super().__init__()
        self.alpha, self.scale = alpha, scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type == "cpu" and x.numel() >= self.MIN_ELEMENTS_BY_EXP:
            return _ELUByExp.apply(x, self.alpha, self.scale)
        return torch.ops.aten.elu(x, self.alpha, self.scale, 1.0)  # F.elu/F.selu's op

    def extra_repr(self) -> str:
        return f"alpha={self.alpha:.4g}, scale={self.scale:.4g}"


def _runs_without_onednn(conv: nn.Conv2d | nn.ConvTranspose2d, x: torch.Tensor) -> bool:
    return (x.device.type == "cpu" and min(conv.in_channels, conv.out_channels) <= 3
            and conv.groups == 1 and conv.dilation == (1, 1) and conv.padding_mode == "zeros"
            and not isinstance(conv.padding, str) and not torch.is_autocast_enabled("cpu"))


class Conv2d(nn.Conv2d):
    """nn.Conv2d, faster on CPUs where it reads or writes images (1 to 3 channels).

    PyTorch runs CPU convolutions through oneDNN, whose layout conversions cost more than
    they save for so few channels: a DCGAN discriminator's first layer (1 -> 64 channels,
    5x5, stride 2, batch 128) took 32 ms forward and backward with oneDNN against 18 ms
    without, its generator's last (64 -> 1, transposed) 50 ms against 17 (one core).
    Such layers call PyTorch's own CPU kernel (the one it picks with oneDNN switched off)
    directly: the choice is this call's alone, with no process-wide switch that another
    thread would see. The numbers are PyTorch's; gradients of gradients work (R1, WGAN-GP).
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not _runs_without_onednn(self, x):
            return super().forward(x)
        return torch.ops.aten.thnn_conv2d(x, self.weight, list(self.kernel_size), self.bias,
                                          list(self.stride), list(self.padding))


class ConvTranspose2d(nn.ConvTranspose2d):
    """nn.ConvTranspose2d, faster on CPUs where it writes or reads images (see Conv2d)."""

    def forward(self, x: torch.Tensor, output_size: list[int] | None = None) -> torch.Tensor:
        if output_size is not None or not _runs_without_onednn(self, x):
            return super().forward(x, output_size)
        return torch.ops.aten.slow_conv_transpose2d(
            x, self.weight, list(self.kernel_size), self.bias, list(self.stride),
            list(self.padding), list(self.output_padding), [1, 1])


ACTIVATIONS = {
    "relu": nn.ReLU,
    "selu": lambda: ELU(ELU.SELU_ALPHA, ELU.SELU_SCALE),
    "elu": ELU,
    "gelu": nn.GELU,
    "leaky_relu": lambda: nn.LeakyReLU(0.2),
    "tanh": nn.Tanh,
    "sigmoid": nn.Sigmoid,
    "identity": nn.Identity,
}


def make_activation(name: str | None) -> nn.Module:
    """Build an activation layer from its config name (None means identity)."""
    if name is None:
        return nn.Identity()
    if name not in ACTIVATIONS:
        raise GenmodelsError(
            f"Unknown activation {name!r}; valid choices: {', '.join(sorted(ACTIVATIONS))}."
        )
    return ACTIVATIONS[name]()


# The values an activation can produce, where they are bounded (the others reach below
# -1 and above 1).
OUTPUT_RANGES = {nn.Tanh: (-1.0, 1.0), nn.Sigmoid: (0.0, 1.0), nn.ReLU: (0.0, math.inf)}


def output_activation(network: nn.Module) -> nn.Module:
    """The layer that makes `network`'s output: the last activation it registers (each
    generator and decoder here registers its output activation last: `make_activation`
    gives an Identity where there is none; tests/test_networks.py checks them all). A
    network without activation layers gets an Identity: its outputs are unbounded."""
    activations = tuple({type(make_activation(name)) for name in ACTIVATIONS})  # ELU, ...
    found = [m for m in network.modules() if isinstance(m, activations)]
    return found[-1] if found else nn.Identity()

def init_for_activation(layer: nn.Module, activation: str | None) -> None:
    """SELU self-normalises only with LeCun-normal weights (Klambauer et al., 2017)."""
    if activation == "selu" and isinstance(layer, nn.Linear | nn.Conv2d | nn.ConvTranspose2d):
        nn.init.kaiming_normal_(layer.weight, nonlinearity="linear")  # std = 1/sqrt(fan_in)
        nn.init.zeros_(layer.bias)


INITS = ("torch", "glorot")


def apply_init(module: nn.Module, init: str) -> nn.Module:
    """init="torch" keeps PyTorch's default initialisation (and LeCun-normal before SELU,
    see `init_for_activation`); "glorot" is Keras' default for every dense and conv layer:
    Glorot-uniform weights (Glorot & Bengio, 2010), limit sqrt(6 / (fan_in + fan_out)),
    and zero biases."""
    if init not in INITS:
        raise GenmodelsError(f"Unknown init {init!r}; valid choices: {', '.join(INITS)}.")
    if init == "glorot":
        for layer in module.modules():
            if isinstance(layer, nn.Linear | nn.Conv2d | nn.ConvTranspose2d):
                # Symmetric in fan_in and fan_out, so a transposed conv's swapped
                # in/out weight layout gives Keras' limit too.
                nn.init.xavier_uniform_(layer.weight)
                if layer.bias is not None:
                    nn.init.zeros_(layer.bias)
    return module


def check_image_shape(channels: int, image_size: int, any_channels: bool = False) -> None:
    """Images have 1 or 3 channels; `any_channels` admits inputs with extra channels (such
    as a conditional discriminator's label maps)."""
    if channels not in (1, 3) and not (any_channels and channels >= 1):
        raise GenmodelsError(f"channels must be 1 or 3, got {channels!r}.")
    if image_size < 4:
        raise GenmodelsError(f"image_size must be at least 4, got {image_size!r}.")


class Dropout(nn.Module):
    """Inverted dropout, as `nn.Dropout`, with a cheaper random mask on CPU.

    On CPU `nn.Dropout` spends most of its time in `bernoulli_`; here the mask comes from
    random 64-bit integers read as bytes (about 4x faster end to end on these machines),
    so the drop probability is rounded to a multiple of 1/256. Elsewhere `F.dropout` runs.
    """

    def __init__(self, p: float = 0.5):
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise GenmodelsError(f"dropout probability must be in [0, 1), got {p!r}.")
        self.p = p
        self.byte_threshold = round(p * 256)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        if x.device.type != "cpu":
            return F.dropout(x, self.p, training=True)
        n = x.numel()
        words = torch.randint(-(2**63), 2**63 - 1, (math.ceil(n / 8),), dtype=torch.int64)
        keep = words.view(torch.uint8)[:n].view_as(x) >= self.byte_threshold
        # One float mask, so that the backward pass is one multiplication too.
        return x * keep.to(x.dtype).mul_(256 / (256 - self.byte_threshold))

    def extra_repr(self) -> str:
        return f"p={self.p}"
