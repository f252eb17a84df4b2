"""Optimizers that torch.optim does not have in the form a recipe needs."""

import torch

from genmodels.errors import GenmodelsError


class KerasRMSprop(torch.optim.Optimizer):
    """RMSprop exactly as Keras 3 computes it (keras/src/optimizers/rmsprop.py):

        v <- rho * v + (1 - rho) * g^2;   w <- w - lr * g / sqrt(v + epsilon)

    `torch.optim.RMSprop` divides by sqrt(v) + eps instead. With Keras' epsilon of 1e-7 the
    two differ wherever v is below ~1e-6 (gradients below ~1e-3): Keras' step is then at
    most lr * g / sqrt(1e-7), about 3,000 lr g, while PyTorch's stays about lr * sign(g)
    however small g is (lr * sign(g) / sqrt(1 - rho) on the first step). Geron's Keras
    recipes (DCGAN, VAE) train with this.
    """

    def __init__(self, params, lr: float = 1e-3, rho: float = 0.9, epsilon: float = 1e-7):
        if lr <= 0 or not 0.0 <= rho < 1.0 or epsilon < 0:
            raise GenmodelsError(f"KerasRMSprop needs lr > 0, 0 <= rho < 1 and epsilon >= 0, "
                             f"got {lr}, {rho}, {epsilon}.")
        super().__init__(params, {"lr": lr, "rho": rho, "epsilon": epsilon})

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
            torch._foreach_mul_(velocities, group["rho"])
            torch._foreach_addcmul_(velocities, grads, grads, value=1 - group["rho"])
            denominators = torch._foreach_add(velocities, group["epsilon"])
            torch._foreach_sqrt_(denominators)
            torch._foreach_addcdiv_(params, grads, denominators, value=-group["lr"])
        return loss
