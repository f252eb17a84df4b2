"""Pieces shared by GAN discriminators and generators: batch-statistics layers, the dense
discriminator, label conditioning, spectral normalization, the experience-replay buffer."""

import inspect
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from genmodels.errors import GenmodelsError
from genmodels.nn.dense import mlp
from genmodels.nn.layers import check_image_shape


class MinibatchStdDev(nn.Module):
    """Appends one feature (channel): the standard deviation of every feature over a group
    of images, averaged (Karras et al., 2018, "Progressive Growing of GANs", sec. 3).

    D can then see how varied a batch is, which discourages mode collapse. Works on
    (N, C, H, W) feature maps and on (N, F) feature vectors. The batch must split into
    groups of `group_size`; otherwise the whole batch is one group.
    """

    def __init__(self, group_size: int = 4):
        super().__init__()
        self.group_size = group_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = len(x)
        group = self.group_size if n % self.group_size == 0 else n
        # Images i, i + n/group, ... form a group, as in the paper's reshape.
        grouped = x.reshape(group, n // group, *x.shape[1:]).float()
        std = (grouped.var(dim=0, unbiased=False) + 1e-8).sqrt()  # (n/group, ...)
        stat = std.flatten(1).mean(1).to(x.dtype).repeat(group)  # one value per image
        shape = (n, 1, *x.shape[2:])
        return torch.cat([x, stat.view(n, *([1] * (x.dim() - 1))).expand(shape)], dim=1)


class MinibatchDiscrimination(nn.Module):
    """Appends `kernels` features measuring how close each example is to the others in the
    batch (Salimans et al., 2016, "Improved Techniques for Training GANs", sec. 3.2):
    M_i = x_i T (kernels x kernel_dim), o(x_i)_b = sum_j exp(-||M_i,b - M_j,b||_1)."""

    def __init__(self, in_features: int, kernels: int = 50, kernel_dim: int = 5):
        super().__init__()
        self.kernels, self.kernel_dim = kernels, kernel_dim
        self.T = nn.Parameter(torch.randn(in_features, kernels * kernel_dim) * 0.1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m = (x @ self.T).view(len(x), self.kernels, self.kernel_dim)
        l1 = (m[:, None] - m[None]).abs().sum(-1)  # (N, N, kernels)
        similarity = torch.exp(-l1).sum(1) - 1  # leave out each example's match with itself
        return torch.cat([x, similarity], dim=1)


def batch_statistics_head(in_features: int, minibatch_kernels: int) -> tuple[nn.Module, int]:
    """Minibatch discrimination before the final dense layer when asked, and its width."""
    if not minibatch_kernels:
        return nn.Identity(), in_features
    return MinibatchDiscrimination(in_features, minibatch_kernels), in_features + minibatch_kernels


class DenseDiscriminator(nn.Module):
    """Image -> flatten -> dense layers of `hidden_sizes` -> one logit per image."""

    def __init__(self, channels: int, image_size: int, hidden_sizes: list[int] = (150, 100),
                 activation: str = "selu", minibatch_stddev: bool = False,
                 minibatch_kernels: int = 0):
        super().__init__()
        check_image_shape(channels, image_size, any_channels=True)
        hidden_sizes = list(hidden_sizes)
        width = hidden_sizes[-1] + int(minibatch_stddev)
        head, width = batch_statistics_head(width, minibatch_kernels)
        self.net = nn.Sequential(
            nn.Flatten(),
            mlp([channels * image_size * image_size, *hidden_sizes], activation, activation),
            MinibatchStdDev() if minibatch_stddev else nn.Identity(),
            head,
            nn.Linear(width, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).squeeze(1)


class ConditionalGenerator(nn.Module):
    """G(z, y): the one-hot class label is appended to the codings (Mirza & Osindero, 2014).

    `network` is a partial generator (Hydra `_partial_: true`), built here with room for
    the label in its input; a network that redraws its input noise (StyleGAN's style
    mixing) is told which inputs are the label (`label_dims`), so that it keeps them.
    Keyword options of `forward` (StyleGAN's `truncation`) go to the network.
    """

    def __init__(self, network: Callable[..., nn.Module], latent_dim: int, num_classes: int):
        super().__init__()
        self.num_classes = num_classes
        options = ({"label_dims": num_classes}
                   if "label_dims" in inspect.signature(network).parameters else {})
        self.net = network(latent_dim=latent_dim + num_classes, **options)

    def forward(self, z: torch.Tensor, labels: torch.Tensor, **options) -> torch.Tensor:
        one_hot = F.one_hot(labels, self.num_classes).to(z.dtype)
        return self.net(torch.cat([z, one_hot], 1), **options)


class ConditionalDiscriminator(nn.Module):
    """D(x, y): the one-hot label enters as `num_classes` constant image channels
    (Mirza & Osindero, 2014). `network` is a partial discriminator built for them."""

    def __init__(self, network: Callable[..., nn.Module], channels: int, num_classes: int):
        super().__init__()
        self.num_classes = num_classes
        self.net = network(channels=channels + num_classes)

    def forward(self, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        maps = F.one_hot(labels, self.num_classes).to(x.dtype)[:, :, None, None]
        return self.net(torch.cat([x, maps.expand(-1, -1, *x.shape[2:])], 1))


def uses_batch_statistics(module: nn.Module) -> bool:
    """Whether any layer's output for one image depends on the other images of the batch
    (batch norm in training mode, minibatch stddev or discrimination)."""
    return any(isinstance(layer, nn.modules.batchnorm._BatchNorm | MinibatchStdDev
                          | MinibatchDiscrimination) for layer in module.modules())


def spectral_normalize(module: nn.Module) -> nn.Module:
    """Spectral normalization (Miyato et al., 2018) of every dense and conv layer."""
    layers = [layer for layer in module.modules()
              if isinstance(layer, nn.Linear | nn.Conv2d | nn.ConvTranspose2d)]
    if not layers:
        # ProGAN's equalized layers scale their weights at run time: normalizing the
        # stored weights would not bound the layers' spectral norms.
        raise GenmodelsError(f"spectral_norm=true needs nn.Linear or nn.Conv2d layers in the "
                             f"discriminator, and {type(module).__name__} has none; set "
                             "spectral_norm=false.")
    for layer in layers:
        nn.utils.parametrizations.spectral_norm(layer)
    return module


class ReplayBuffer:
    """Experience replay for D (Shrivastava et al., 2017, sec. 2.3): a store of past fakes
    of which a `share` of each discriminator batch is drawn, so D keeps penalising modes G
    has left. Filled first-in-first-out; lives on the fakes' device. Saved in checkpoints
    (`state_dict`), so a resumed run draws from the same past fakes as an uninterrupted one."""

    def __init__(self, capacity: int, share: float):
        if capacity < 1 or not 0.0 < share < 1.0:
            raise GenmodelsError(
                f"replay needs capacity >= 1 and 0 < share < 1, got {capacity!r}, {share!r}.")
        self.capacity, self.share = capacity, share
        self.images: torch.Tensor | None = None
        self.filled = self.position = 0

    def state_dict(self) -> dict:
        images = None if self.images is None else self.images[: self.filled].clone()
        return {"images": images, "filled": self.filled, "position": self.position}

    def load_state_dict(self, state: dict) -> None:
        saved, self.images = state["images"], None
        if saved is not None:  # (on the CPU: `mix` moves it to the fakes' device)
            self.images = saved.new_empty(self.capacity, *saved.shape[1:])
            self.images[: len(saved)] = saved
        self.filled, self.position = state["filled"], state["position"]

    def mix(self, fake: torch.Tensor) -> torch.Tensor:
        """`fake` with its last `share` replaced by images drawn from the buffer."""
        if self.images is not None and self.images.device != fake.device:
            self.images = self.images.to(fake.device)  # restored from a checkpoint on the CPU
        k = round(self.share * len(fake)) if self.filled else 0
        if k == 0:
            return fake
        index = torch.randint(0, self.filled, (k,), device=fake.device)
        return torch.cat([fake[: len(fake) - k], self.images[index].to(fake.dtype)])

    def push(self, fake: torch.Tensor) -> None:
        fake = fake.detach()[: self.capacity]
        if self.images is None:
            self.images = fake.new_empty(self.capacity, *fake.shape[1:])
        index = (self.position + torch.arange(len(fake), device=fake.device)) % self.capacity
        self.images[index] = fake.to(self.images.dtype)
        self.position = (self.position + len(fake)) % self.capacity
        self.filled = min(self.filled + len(fake), self.capacity)
