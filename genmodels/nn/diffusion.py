"""The Gaussian diffusion process: noise schedules, the forward process q(x_t | x_0), the
posterior q(x_{t-1} | x_t, x_0), conversions between what a network may predict, and one
step of each sampler.

Timesteps are 0-based: index t = 0 .. T-1 is step t + 1 of the papers, so alphas_cumprod[t]
is Ho et al.'s abar_{t+1} = prod_{s <= t+1} (1 - beta_s), and "abar before index 0" is 1
(x_0 itself, no noise).

Papers: Ho et al., "Denoising Diffusion Probabilistic Models", 2020 (DDPM); Nichol &
Dhariwal, "Improved Denoising Diffusion Probabilistic Models", 2021 (cosine schedule,
respacing); Song et al., "Denoising Diffusion Implicit Models", 2021 (DDIM); Salimans & Ho,
"Progressive Distillation for Fast Sampling of Diffusion Models", 2022 (v-prediction).
"""

import math

import torch
from torch import nn

from genmodels.errors import GenmodelsError

SCHEDULES = ("linear", "cosine")
PREDICTIONS = ("epsilon", "v")
SAMPLERS = ("ddim", "ddpm")

# Nichol & Dhariwal's offset s of the cosine schedule (sec. 3.2), and their cap on beta_t,
# which keeps the last steps from being singular near t = T.
COSINE_OFFSET, MAX_BETA = 0.008, 0.999


def linear_betas(timesteps: int) -> torch.Tensor:
    """Ho et al.'s linear schedule, beta_1 = 1e-4 to beta_T = 0.02 for T = 1000 (sec. 4),
    scaled by 1000 / T for other T so that the total noise stays about the same (Nichol &
    Dhariwal's `get_named_beta_schedule`)."""
    scale = 1000 / timesteps
    return torch.linspace(scale * 1e-4, scale * 0.02, timesteps, dtype=torch.float64)


def cosine_alphas_cumprod(timesteps: int, offset: float = COSINE_OFFSET) -> torch.Tensor:
    """Nichol & Dhariwal's eq. 17, abar_t = f(t) / f(0) with f(t) = cos^2((t/T + s) / (1 + s)
    * pi/2), at the papers' t = 1 .. T (before their cap on beta_t)."""
    def f(t: torch.Tensor) -> torch.Tensor:
        return torch.cos((t / timesteps + offset) / (1 + offset) * math.pi / 2) ** 2

    steps = torch.arange(timesteps + 1, dtype=torch.float64)
    return f(steps[1:]) / f(steps[:1])


def cosine_betas(timesteps: int) -> torch.Tensor:
    """beta_t = 1 - abar_t / abar_{t-1} of the cosine schedule, capped at 0.999 (eq. 17)."""
    alphas_cumprod = cosine_alphas_cumprod(timesteps)
    previous = torch.cat([torch.ones(1, dtype=torch.float64), alphas_cumprod[:-1]])
    return (1 - alphas_cumprod / previous).clamp(max=MAX_BETA)


def check_choice(name: str, value, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise GenmodelsError(f"Unknown {name} {value!r}; valid choices: {', '.join(choices)}.")


class NoiseSchedule(nn.Module):
    """beta_t and the quantities derived from it, as (T,) float32 buffers (computed in
    float64). Not saved in checkpoints: they follow from (schedule, timesteps)."""

    def __init__(self, schedule: str = "cosine", timesteps: int = 1000):
        super().__init__()
        check_choice("model.schedule", schedule, SCHEDULES)
        if type(timesteps) is not int or timesteps < 2:
            raise GenmodelsError(f"model.timesteps must be a whole number of at least 2, got "
                                 f"{timesteps!r}.")
        self.schedule, self.timesteps = schedule, timesteps
        betas = linear_betas(timesteps) if schedule == "linear" else cosine_betas(timesteps)
        alphas_cumprod = torch.cumprod(1 - betas, dim=0)
        for name, value in (("betas", betas), ("alphas_cumprod", alphas_cumprod)):
            self.register_buffer(name, value.float(), persistent=False)

    def abar(self, t: torch.Tensor) -> torch.Tensor:
        """abar at indices t, shaped (N, 1, 1, 1) to scale images; 1 at t = -1 (x_0)."""
        padded = torch.cat([self.alphas_cumprod.new_ones(1), self.alphas_cumprod])
        return padded[t + 1].view(-1, 1, 1, 1)

    def snr(self, t: torch.Tensor) -> torch.Tensor:
        """The signal-to-noise ratio abar_t / (1 - abar_t) at indices t, shaped (N,)."""
        abar = self.alphas_cumprod[t]
        return abar / (1 - abar)

    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """x_t ~ q(x_t | x_0) = N(sqrt(abar_t) x_0, (1 - abar_t) I) (Ho et al., eq. 4),
        drawn with the given standard normal noise."""
        abar = self.abar(t)
        return abar.sqrt() * x0 + (1 - abar).sqrt() * noise

    def v_target(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """v = sqrt(abar_t) eps - sqrt(1 - abar_t) x_0 (Salimans & Ho, sec. 4)."""
        abar = self.abar(t)
        return abar.sqrt() * noise - (1 - abar).sqrt() * x0

    def training_target(self, prediction: str, x0, noise, t) -> torch.Tensor:
        """What the network learns to output: the noise, or v."""
        return noise if prediction == "epsilon" else self.v_target(x0, noise, t)

    def predicted_x0(self, prediction: str, x_t, t, output) -> torch.Tensor:
        """x_0 from x_t and the network's output: (x_t - sqrt(1 - abar) eps) / sqrt(abar)
        (eq. 4 solved for x_0), or sqrt(abar) x_t - sqrt(1 - abar) v."""
        abar = self.abar(t)
        if prediction == "epsilon":
            return (x_t - (1 - abar).sqrt() * output) / abar.sqrt()
        return abar.sqrt() * x_t - (1 - abar).sqrt() * output

    def posterior_variance(self, t: torch.Tensor) -> torch.Tensor:
        """Ho et al.'s beta tilde at indices t, (1 - abar_{t-1}) / (1 - abar_t) beta_t
        (0 at t = 0), shaped (N, 1, 1, 1)."""
        abar, abar_prev = self.abar(t), self.abar(t - 1)
        return (1 - abar_prev) / (1 - abar) * (1 - abar / abar_prev)

    def predicted_noise(self, x_t, t, x0) -> torch.Tensor:
        """The noise that makes x_t from x_0: (x_t - sqrt(abar) x_0) / sqrt(1 - abar)."""
        abar = self.abar(t)
        return (x_t - abar.sqrt() * x0) / (1 - abar).sqrt()


def sampling_timesteps(timesteps: int, steps: int) -> list[int]:
    """`steps` indices from T-1 down to 0, evenly spaced (all of them when steps = T): the
    subsequence tau of DDIM (Song et al., sec. 4.2) and of respaced DDPM sampling."""
    if type(steps) is not int or not 1 <= steps <= timesteps:
        raise GenmodelsError(f"The sampling steps (model.sample_steps, sample_steps= of "
                             f"generate.py, steps= of sample()) must be a whole number from 1 "
                             f"to model.timesteps={timesteps}, got {steps!r}.")
    if steps == 1:
        return [timesteps - 1]
    return torch.linspace(timesteps - 1, 0, steps, dtype=torch.float64).round().long().tolist()


def posterior_mean_variance(x0, x_t, abar_t, abar_prev) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and variance of q(x_prev | x_t, x_0) between two noise levels abar_t < abar_prev
    (Ho et al., eqs. 6-7, with beta_t = 1 - abar_t / abar_prev so that a skipped
    subsequence works as well: Nichol & Dhariwal's respacing):
        mean = sqrt(abar_prev) beta_t / (1 - abar_t) x_0
               + sqrt(alpha_t) (1 - abar_prev) / (1 - abar_t) x_t,
        variance = (1 - abar_prev) / (1 - abar_t) beta_t   (Ho et al.'s beta tilde)."""
    alpha_t = abar_t / abar_prev
    beta_t = 1 - alpha_t
    mean = (abar_prev.sqrt() * beta_t / (1 - abar_t) * x0
            + alpha_t.sqrt() * (1 - abar_prev) / (1 - abar_t) * x_t)
    return mean, (1 - abar_prev) / (1 - abar_t) * beta_t


def ddpm_step(x_t, x0, abar_t, abar_prev, noise) -> torch.Tensor:
    """Ancestral sampling, Ho et al.'s Algorithm 2: x_prev = posterior mean + sigma z with
    sigma^2 the posterior variance, z = `noise` (none at the last step, where abar_prev = 1
    and that variance is 0). The mean comes from the predicted x_0 (clipped by the caller,
    as Ho et al.'s code does), which is Algorithm 2's 1/sqrt(alpha_t) (x_t - beta_t /
    sqrt(1 - abar_t) eps) when it is not clipped."""
    mean, variance = posterior_mean_variance(x0, x_t, abar_t, abar_prev)
    return mean + variance.sqrt() * noise


def ddim_step(x_t, x0, eps, abar_t, abar_prev, eta: float, noise) -> torch.Tensor:
    """DDIM's update (Song et al., eq. 12):
        x_prev = sqrt(abar_prev) x_0 + sqrt(1 - abar_prev - sigma^2) eps + sigma z,
        sigma = eta sqrt((1 - abar_prev) / (1 - abar_t)) sqrt(1 - abar_t / abar_prev)
    (eq. 16). eta = 0: deterministic; eta = 1: sigma^2 is the posterior variance, and the
    step is DDPM's ancestral one."""
    sigma = eta * ((1 - abar_prev) / (1 - abar_t) * (1 - abar_t / abar_prev)).sqrt()
    direction = (1 - abar_prev - sigma**2).clamp(min=0).sqrt() * eps
    return abar_prev.sqrt() * x0 + direction + sigma * noise


# ----- the variational bound (Ho et al., eq. 5) ---------------------------------------------

# Data in [-1, 1] holds 8-bit values: 256 bins of width 2/255, centred on the values.
HALF_BIN = 1 / 255


def normal_kl(mean1, var1, mean2, var2) -> torch.Tensor:
    """KL(N(mean1, var1) || N(mean2, var2)) per element, in nats."""
    return 0.5 * (torch.log(var2 / var1) + (var1 + (mean1 - mean2) ** 2) / var2 - 1)


def discretized_gaussian_log_likelihood(x, mean, std) -> torch.Tensor:
    """log p(x) per element of Ho et al.'s decoder (eq. 13): N(mean, std^2) integrated over
    the bin of x, [x - 1/255, x + 1/255], with the edge bins reaching to -inf and +inf, for
    x on the 256 values of 8-bit data scaled to [-1, 1]."""
    x, mean, std = (torch.as_tensor(v, dtype=torch.float64) for v in (x, mean, std))
    normal = torch.distributions.Normal(mean, std)
    upper = torch.where(x > 1 - HALF_BIN, 1.0, normal.cdf(x + HALF_BIN))
    lower = torch.where(x < -1 + HALF_BIN, 0.0, normal.cdf(x - HALF_BIN))
    # Float64 CDFs; a bin more than ~7 standard deviations away from the mean gets 1e-12
    # (as in Nichol & Dhariwal's code) rather than a log of 0.
    return (upper - lower).clamp(min=1e-12).log()
