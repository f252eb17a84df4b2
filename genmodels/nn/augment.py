"""Differentiable augmentation for GANs on small data (DiffAugment: Zhao et al., 2020,
"Differentiable Augmentation for Data-Efficient GAN Training").

D sees every image (real or fake, in D's steps and in G's) through the same random,
differentiable transforms, so it cannot memorise the few real images, and G's gradient
flows back through the transform to G. Each transform draws its own parameters per image.
The paper's policies: color (brightness, saturation, contrast), translation (up to 1/8 of
the side, zeros shifted in), cutout (a square of half the side set to zero).
"""

import torch
import torch.nn.functional as F

from genmodels.errors import GenmodelsError


def color(x: torch.Tensor) -> torch.Tensor:
    """Brightness + U(-0.5, 0.5); saturation x U(0, 2) around each pixel's channel mean;
    contrast x U(0.5, 1.5) around each image's mean (the paper's ranges)."""
    n = len(x)
    x = x + (torch.rand(n, 1, 1, 1, device=x.device, dtype=x.dtype) - 0.5)
    mean = x.mean(dim=1, keepdim=True)
    x = (x - mean) * (torch.rand(n, 1, 1, 1, device=x.device, dtype=x.dtype) * 2) + mean
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    return (x - mean) * (torch.rand(n, 1, 1, 1, device=x.device, dtype=x.dtype) + 0.5) + mean


def translation(x: torch.Tensor, ratio: float = 0.125) -> torch.Tensor:
    """Each image shifted by whole pixels, up to `ratio` of its side each way; the pixels
    shifted in are zero."""
    n, _, height, width = x.shape
    reach_y, reach_x = int(height * ratio + 0.5), int(width * ratio + 0.5)
    shift_y = torch.randint(-reach_y, reach_y + 1, (n, 1, 1), device=x.device)
    shift_x = torch.randint(-reach_x, reach_x + 1, (n, 1, 1), device=x.device)
    padded = F.pad(x, [reach_x, reach_x, reach_y, reach_y])
    rows = torch.arange(height, device=x.device).view(1, -1, 1) + reach_y - shift_y
    cols = torch.arange(width, device=x.device).view(1, 1, -1) + reach_x - shift_x
    images = torch.arange(n, device=x.device).view(-1, 1, 1)
    # Indices around a slice: the result is (n, height, width, channels).
    return padded[images, :, rows, cols].permute(0, 3, 1, 2)


def cutout(x: torch.Tensor, ratio: float = 0.5) -> torch.Tensor:
    """A square (`ratio` of each side) at a random place in each image set to zero; it may
    reach over the border."""
    n, _, height, width = x.shape
    size_y, size_x = int(height * ratio + 0.5), int(width * ratio + 0.5)
    top = torch.randint(0, height + 1 - size_y % 2, (n, 1, 1), device=x.device) - size_y // 2
    left = torch.randint(0, width + 1 - size_x % 2, (n, 1, 1), device=x.device) - size_x // 2
    rows = torch.arange(height, device=x.device).view(1, -1, 1)
    cols = torch.arange(width, device=x.device).view(1, 1, -1)
    inside = ((rows >= top) & (rows < top + size_y) & (cols >= left) & (cols < left + size_x))
    return x * (~inside).unsqueeze(1).to(x.dtype)


AUGMENTATIONS = {"color": color, "translation": translation, "cutout": cutout}


def check_augment(policy) -> list[str]:
    """The policy as a list of transform names (null: none); an unknown name is refused."""
    policy = list(policy or [])
    unknown = [name for name in policy if name not in AUGMENTATIONS]
    if unknown:
        raise GenmodelsError(f"Unknown augmentation {unknown[0]!r} in model.augment; valid "
                             f"choices: {', '.join(AUGMENTATIONS)} (a list, e.g. "
                             "model.augment=[translation,cutout]), or null.")
    return policy


def diff_augment(x: torch.Tensor, policy: list[str]) -> torch.Tensor:
    """x through each transform of `policy` in turn (differentiable in x)."""
    for name in policy:
        x = AUGMENTATIONS[name](x)
    return x
