"""trainer.max_steps in the model's own steps (a GAN's generator steps)."""

import lightning as L

from genmodels.engine.lightning_private import set_max_steps


class StepBudget(L.Callback):
    """Lightning's `trainer.max_steps` counts optimizer steps (`global_step`), but a model
    says what its own training steps are: in a GAN, `max_steps` means generator steps
    (D's steps come on top). At fit start `max_steps` becomes the model's
    `optimizer_steps_for(max_steps)`, and it is restored at the end."""

    def __init__(self):
        self.as_set: int | None = None

    def on_fit_start(self, trainer, pl_module) -> None:
        self.as_set = trainer.max_steps
        if self.as_set > 0:
            set_max_steps(trainer, pl_module.optimizer_steps_for(self.as_set))

    def on_fit_end(self, trainer, pl_module) -> None:
        set_max_steps(trainer, self.as_set)
