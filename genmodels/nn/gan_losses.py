"""GAN objectives and regularizers, all on D's raw outputs (logits or critic scores).

Each loss returns (discriminator loss, generator loss) pieces through two functions so the
GAN's two phases can call the half they need.
"""

import torch
import torch.nn.functional as F

from genmodels.errors import GenmodelsError


def discriminator_loss(kind: str, real: torch.Tensor, fake: torch.Tensor,
                       label_smoothing: float = 0.0) -> torch.Tensor:
    """D's loss on its outputs for real and fake images (mean over the batch).

    - minimax / non_saturating (Goodfellow et al., 2014, eq. 1): binary cross-entropy with
      reals labelled 1 (or 1 - label_smoothing: one-sided smoothing, Salimans et al., 2016)
      and fakes 0; both variants train D the same way.
    - least_squares (Mao et al., 2017, eq. 2): 1/2 (D(x) - 1)^2 + 1/2 D(G(z))^2.
    - hinge (Lim & Ye, 2017; Miyato et al., 2018): relu(1 - D(x)) + relu(1 + D(G(z))).
    - wasserstein (Arjovsky et al., 2017): D(G(z)) - D(x), the negated critic estimate of
      the Wasserstein-1 distance (pair it with a penalty or spectral norm for Lipschitz).
    """
    check_loss(kind, label_smoothing)
    real_target = 1.0 - label_smoothing
    real, fake = real.float(), fake.float()
    if kind in ("minimax", "non_saturating"):
        return (F.binary_cross_entropy_with_logits(real, torch.full_like(real, real_target))
                + F.binary_cross_entropy_with_logits(fake, torch.zeros_like(fake))) / 2
    if kind == "least_squares":
        return 0.5 * ((real - real_target).square().mean() + fake.square().mean())
    if kind == "hinge":
        return F.relu(1 - real).mean() + F.relu(1 + fake).mean()
    return fake.mean() - real.mean()  # wasserstein


def generator_loss(kind: str, fake: torch.Tensor) -> torch.Tensor:
    """G's loss on D's outputs for its images.

    - minimax: G minimises log(1 - D(G(z))) = -softplus(logit) (the original, saturating
      objective of Goodfellow et al., 2014, eq. 1);
    - non_saturating: G maximises log D(G(z)), i.e. minimises softplus(-logit) (same paper,
      section 3);
    - least_squares: 1/2 (D(G(z)) - 1)^2 (Mao et al., 2017);
    - hinge and wasserstein: -D(G(z)).
    """
    check_loss(kind)
    fake = fake.float()
    if kind == "minimax":
        return -F.softplus(fake).mean()
    if kind == "non_saturating":
        return F.softplus(-fake).mean()
    if kind == "least_squares":
        return 0.5 * (fake - 1).square().mean()
    return -fake.mean()  # hinge, wasserstein


LOSSES = ("minimax", "non_saturating", "least_squares", "hinge", "wasserstein")


def check_loss(kind: str, label_smoothing: float = 0.0) -> None:
    if kind not in LOSSES:
        raise GenmodelsError(f"Unknown GAN loss {kind!r}; valid choices: {', '.join(LOSSES)}.")
    if not 0.0 <= label_smoothing < 1.0:
        raise GenmodelsError(f"label_smoothing must be in [0, 1), got {label_smoothing!r}.")
    if label_smoothing and kind in ("hinge", "wasserstein"):
        raise GenmodelsError(f"label_smoothing applies to labelled losses, not to {kind!r}.")


PENALTIES = ("gradient_penalty", "r1")


def input_gradient(outputs: torch.Tensor, inputs: torch.Tensor) -> torch.Tensor:
    """d(sum of outputs)/d(inputs): each image's gradient of its own output, kept in the
    graph so that a penalty on it can be trained.

    Not scaled under 16-mixed precision either: the gradient entering D is 1 per output
    (summed in float32), which no float16 layer of a working D overflows, whatever the
    GradScaler's scale. (Scaling the outputs by that scale first, as torch.amp's
    parameter-gradient recipe does, overflows float16 as soon as the scale exceeds its
    maximum 65504, as the initial 2^16 does: the penalty was NaN at every scale from 2^16.)
    The penalty is then scaled with the rest of D's loss for D's own backward pass.
    """
    (grad,) = torch.autograd.grad(outputs.float().sum(), inputs, create_graph=True)
    return grad


def gradient_penalty(critic, real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
    """WGAN-GP (Gulrajani et al., 2017, eq. 3): E[(||grad D(x_hat)|| - 1)^2] at random
    points x_hat on lines between real and fake images."""
    t = torch.rand(len(real), *([1] * (real.dim() - 1)), device=real.device, dtype=real.dtype)
    x_hat = torch.lerp(fake.detach().to(real.dtype), real.detach(), t).requires_grad_(True)
    grad = input_gradient(critic(x_hat), x_hat)
    return (grad.float().flatten(1).norm(dim=1) - 1).square().mean()


def r1_penalty(critic, real: torch.Tensor) -> torch.Tensor:
    """R1 (Mescheder et al., 2018, eq. 9) without its gamma/2: E[||grad D(x)||^2] on reals."""
    real = real.detach().requires_grad_(True)
    grad = input_gradient(critic(real), real)
    return grad.float().flatten(1).square().sum(1).mean()
