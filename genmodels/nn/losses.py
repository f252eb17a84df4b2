"""Likelihoods and divergences, summed over an image (or a latent vector): nats per image."""

import math

import torch
import torch.nn.functional as F


def bernoulli_nll(logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """-log p(x | logits) under independent Bernoulli pixels, per image.

    Binary cross-entropy computed from logits for stability; x may be grey levels in [0, 1]
    (then it is the cross-entropy, not a likelihood, as in Kingma & Welling's MNIST runs).
    """
    nll = F.binary_cross_entropy_with_logits(logits.float(), x.float(), reduction="none")
    return nll.flatten(1).sum(1)


def gaussian_nll(mean: torch.Tensor, x: torch.Tensor, std: float | torch.Tensor) -> torch.Tensor:
    """-log N(x; mean, std^2 I) per image: (x - mean)^2 / (2 std^2) + log(std sqrt(2 pi)).

    `std` is one number for every pixel: a float, or a scalar tensor when it is learned.
    """
    squared_error = (x.float() - mean.float()).pow(2).flatten(1).sum(1)
    std = torch.as_tensor(std, dtype=torch.float32, device=squared_error.device)
    per_pixel_const = std.log() + 0.5 * math.log(2 * math.pi)
    return squared_error / (2 * std**2) + per_pixel_const * x[0].numel()


def kl_to_standard_normal(mean: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mean, exp(logvar)) || N(0, I)) per example, in closed form.

    Kingma & Welling (2014), Appendix B: -1/2 * sum(1 + log sigma^2 - mu^2 - sigma^2).
    """
    mean, logvar = mean.float(), logvar.float()
    return -0.5 * (1 + logvar - mean.pow(2) - logvar.exp()).sum(1)
