"""The progress bar: Lightning's, with the model's training losses read from the device
only when it redraws."""

from lightning.pytorch.callbacks import TQDMProgressBar

from genmodels.engine.training_logs import TrainingLogs


class ProgressBar(TQDMProgressBar):
    """Lightning's TQDM progress bar, plus the latest value of each of the model's
    `progress_bar_metrics` (as `train/<name>_step`), taken from the training logs.

    A value logged with `self.log(..., prog_bar=True)` is read back from the device by
    Lightning at every batch end, redrawn or not: on a GPU, a wait for each step to finish
    before the next can be queued. This bar reads the values only when it redraws, every
    `refresh_rate` steps.
    """

    def get_metrics(self, trainer, pl_module) -> dict[str, int | str | float | dict[str, float]]:
        metrics = super().get_metrics(trainer, pl_module)
        for callback in trainer.callbacks:
            if isinstance(callback, TrainingLogs):
                metrics |= {f"train/{name}_step": value.detach().flatten()[0].item()
                            for name, value in callback.shown.items()}
        return metrics
