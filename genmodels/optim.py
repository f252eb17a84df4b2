"""Optimizers that torch.optim does not have in the form a recipe needs, and the warm-up of
an exponential moving average of weights."""

import torch

from genmodels.errors import GenmodelsError


class KerasRMSprop(torch.optim.Optimizer):
    """RMSprop exactly as Keras 3 computes it (keras/src/optimizers/rmsprop.py), with
    `torch.optim.RMSprop`'s argument names (Keras' rho is alpha, its epsilon eps), so that
    a config switches between the two by `_target_` alone:

        v <- alpha * v + (1 - alpha) * g^2;   w <- w - lr * g / sqrt(v + eps)

    `torch.optim.RMSprop` divides by sqrt(v) + eps instead. With Keras' epsilon of 1e-7 the
    two differ wherever v is below ~1e-6 (gradients below ~1e-3): Keras' step is then at
    most lr * g / sqrt(1e-7), about 3,000 lr g, while PyTorch's stays about lr * sign(g)
    however small g is (lr * sign(g) / sqrt(1 - alpha) on the first step). Geron's Keras
    recipes (DCGAN, VAE) train with this. `rho` and `epsilon`, the names of earlier
    genmodels releases, are still read from configs and checkpoints.
    """

    def __init__(self, params, lr: float = 1e-3, alpha: float = 0.9, eps: float = 1e-7, *,
                 rho: float | None = None, epsilon: float | None = None):
        alpha = alpha if rho is None else rho
        eps = eps if epsilon is None else epsilon
        if lr <= 0 or not 0.0 <= alpha < 1.0 or eps < 0:
            raise GenmodelsError(f"KerasRMSprop needs lr > 0, 0 <= alpha < 1 and eps >= 0, "
                                 f"got {lr}, {alpha}, {eps}.")
        super().__init__(params, {"lr": lr, "alpha": alpha, "eps": eps})

    def load_state_dict(self, state_dict: dict) -> None:
        renamed = {"rho": "alpha", "epsilon": "eps"}  # checkpoints of earlier releases
        groups = [{renamed.get(key, key): value for key, value in group.items()}
                  for group in state_dict["param_groups"]]
        super().load_state_dict({**state_dict, "param_groups": groups})

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            grads = [p.grad for p in params]
            velocities = []
            for p in params:
                state = self.state[p]
                if "velocity" not in state:
                    state["velocity"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                velocities.append(state["velocity"])
            torch._foreach_mul_(velocities, group["alpha"])
            torch._foreach_addcmul_(velocities, grads, grads, value=1 - group["alpha"])
            denominators = torch._foreach_add(velocities, group["eps"])
            torch._foreach_sqrt_(denominators)
            torch._foreach_addcdiv_(params, grads, denominators, value=-group["lr"])
        return loss


def ema_decay_at(ema_decay: float, updates: int) -> float:
    """The EMA's decay at its (updates + 1)-th update: min(ema_decay, (1 + n) / (10 + n)), a
    warm-up under which early weights, far from trained, are soon forgotten (TensorFlow's
    ExponentialMovingAverage with num_updates, as Ho et al.'s code uses it).
    The DDPM and the GANs' EMA copy of G use it."""
    return min(ema_decay, (1 + updates) / (10 + updates))


@torch.no_grad()
def update_moving_average(average: torch.nn.Module, live: torch.nn.Module, ema_decay: float,
                          updates: int) -> None:
    """average <- decay * average + (1 - decay) * live for the weights, at its
    (updates + 1)-th update (decay = ema_decay_at(ema_decay, updates)); buffers are copied
    from `live` (a ProGAN stage, StyleGAN's average w, batch-norm statistics)."""
    decay = ema_decay_at(ema_decay, updates)
    torch._foreach_lerp_(list(average.parameters()), list(live.parameters()), 1.0 - decay)
    for average_buffer, buffer in zip(average.buffers(), live.buffers(), strict=True):
        average_buffer.copy_(buffer)
