"""Importance-sampled negative log-likelihood of a VAE: the IWAE bound (Burda et al., 2016).

    log p(x) >= E[ log 1/k sum_i p(x, z_i) / q(z_i|x) ],  z_1..z_k ~ q(z|x),

tight as k grows; k=1 is the ELBO. -bound is the NLL in nats per image that VAE papers
report (about 86-87 nats for a one-layer dense VAE on dynamically binarized MNIST, k=5000).

    from genmodels.metrics.likelihood import importance_sampled_nll
    nll = importance_sampled_nll(model, images, k=1000, batch_size=20000)

From the command line, on a run's validation (or test) split:

    python -m genmodels.jobs.likelihood logs/runs/<run> --k 1000 --split val

A diffusion model's run gets its variational bound instead (`diffusion_bound`), in nats per
image and bits per dimension.
"""

import math

import torch

from genmodels.errors import GenmodelsError

LOG_2PI = math.log(2 * math.pi)


def check_vae(model) -> None:
    for name in ("posterior", "decoder", "reconstruction_nll", "latent_dim"):
        if not hasattr(model, name):
            raise GenmodelsError(
                f"{type(model).__name__} has no `{name}`: importance-sampled likelihoods need "
                "a VAE (an encoder posterior q(z|x) and a decoder likelihood p(x|z))."
            )


def log_importance_weights(model, x: torch.Tensor, num_samples: int,
                           generator: torch.Generator | None = None) -> torch.Tensor:
    """log p(x|z) + log p(z) - log q(z|x) for `num_samples` draws z ~ q(z|x) per image:
    an (N, num_samples) tensor, in nats."""
    mean, logvar = model.posterior(x)
    mean, logvar = mean.float(), logvar.float()
    eps = torch.randn(len(x), num_samples, mean.shape[1], device=mean.device,
                      generator=generator)
    z = mean[:, None] + (0.5 * logvar[:, None]).exp() * eps
    log_q = -0.5 * (eps.pow(2) + logvar[:, None] + LOG_2PI).sum(-1)
    log_prior = -0.5 * (z.pow(2) + LOG_2PI).sum(-1)
    repeated_x = x[:, None].expand(-1, num_samples, *x.shape[1:]).flatten(0, 1)
    decoder_out = model.decoder(z.flatten(0, 1).to(x.dtype))
    log_likelihood = -model.reconstruction_nll(decoder_out, repeated_x).view(len(x), num_samples)
    return log_likelihood + log_prior - log_q


@torch.no_grad()
def importance_sampled_nll_per_image(model, images: torch.Tensor, k: int = 1000,
                                     batch_size: int = 20000,
                                     generator: torch.Generator | None = None) -> torch.Tensor:
    """-log p(x) estimated with k importance samples, per image (nats), as a CPU tensor.

    `batch_size` bounds the decoder passes per forward (images x samples): images are taken
    max(1, batch_size // k) at a time and, when k exceeds batch_size, their k samples in
    chunks whose log-sum-exp is accumulated, so any k fits in memory. `generator` (on the
    model's device) makes the estimate reproducible. The model is put in eval mode.
    """
    check_vae(model)
    if k < 1 or batch_size < 1:
        raise GenmodelsError(f"k and batch_size must be positive, got k={k}, "
                             f"batch_size={batch_size}.")
    model.eval()
    images_per_step = max(1, batch_size // k)
    samples_per_step = min(k, max(1, batch_size // images_per_step))
    results = []
    for x in images.split(images_per_step):
        x = x.to(model.device)
        log_sum = torch.full((len(x),), -math.inf, device=model.device)
        for start in range(0, k, samples_per_step):
            weights = log_importance_weights(model, x, min(samples_per_step, k - start),
                                             generator)
            log_sum = torch.logaddexp(log_sum, weights.logsumexp(dim=1))
        results.append((math.log(k) - log_sum).cpu())
    return torch.cat(results)


def importance_sampled_nll(model, images: torch.Tensor, k: int = 1000, batch_size: int = 20000,
                           generator: torch.Generator | None = None) -> float:
    """Mean importance-sampled NLL over `images` (in the model's value range), in nats per
    image: the IWAE bound with k samples. See `importance_sampled_nll_per_image`."""
    return importance_sampled_nll_per_image(model, images, k, batch_size, generator).mean().item()


@torch.no_grad()
def negative_elbo(model, images: torch.Tensor, batch_size: int = 1000) -> float:
    """-ELBO (reconstruction with one posterior sample + closed-form KL) in nats per image,
    averaged over `images`: the `recon + kl` the VAE logs, for the same images."""
    check_vae(model)
    model.eval()
    total = 0.0
    for x in images.split(batch_size):
        losses = model.losses((x.to(model.device), None))
        total += -losses["elbo"].item() * len(x)
    return total / len(images)


@torch.no_grad()
def diffusion_bound(model, images: torch.Tensor, batch_size: int = 500,
                    generator: torch.Generator | None = None) -> dict[str, float]:
    """A diffusion model's variational bound on -log p(x) (`model.variational_bound`, Ho et
    al. eq. 5) averaged over `images` (in [-1, 1]): `total`, `prior`, `diffusion` and
    `decoder` in nats per image, and `bits_per_dim`, total / (pixel values x ln 2), the
    figure papers report (Ho et al.: 3.70 on CIFAR-10)."""
    model.eval()
    sums: dict[str, float] = {}
    for x in images.split(batch_size):
        for name, values in model.variational_bound(x, generator).items():
            sums[name] = sums.get(name, 0.0) + values.sum().item()
    means = {name: total / len(images) for name, total in sums.items()}
    means["bits_per_dim"] = means["total"] / (math.prod(images.shape[1:]) * math.log(2))
    return means
