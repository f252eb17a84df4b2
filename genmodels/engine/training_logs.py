"""What a model reports while it trains, handed to Lightning's loggers at the right steps."""

import lightning as L
import torch
from lightning.pytorch.loggers import TensorBoardLogger

from genmodels.engine.lightning_private import is_logging_step, logging_step


def step_logs(outputs) -> dict[str, torch.Tensor] | None:
    """The values a training step returned to log (its `"log"` entry), if any."""
    return outputs.get("log") if isinstance(outputs, dict) else None


class TrainingLogs(L.Callback):
    """Logs `train/<name>_step` every `trainer.log_every_n_steps` batches and
    `train/<name>_epoch` (the mean over the epoch) at each epoch's end, for every value in
    the `"log"` entry of what the model's `training_step` returns. A value is a scalar, or
    a vector of one value per optimizer step (fused batches): the step log shows the first,
    the epoch mean counts them all (under 16-mixed, all the finite ones). The figures a
    model only watches (its `monitoring` ones: a GAN's gradient norms and D's accuracies)
    are computed on logging steps alone, so their epoch means average those steps. Under
    16-mixed precision it logs the GradScaler's scale (`train/loss_scale`) on the same
    steps.

    Each `self.log` call costs Lightning a fraction of a millisecond, as much as a whole
    training step of a small model, so the values are summed on the device (no GPU sync)
    and handed to Lightning only on the steps its loggers write. Training logs are per
    rank under DDP: syncing them would cost a collective every step.

    The model's `progress_bar_metrics` are not logged with `prog_bar=True`: Lightning turns
    such values into Python numbers at every batch end (a wait for the GPU each step, the
    bar shown or not). `shown` keeps the latest ones on the device instead, for
    genmodels.callbacks.ProgressBar to read when it redraws.

    After each validation epoch (not the sanity check) it also writes the model's
    `histograms()`, where it has them, to TensorBoard.
    """

    def __init__(self):
        self.epoch_sums: dict[str, tuple[torch.Tensor, int]] = {}  # name: (sum, count)
        self.loss_scale: torch.Tensor | None = None  # the scale this step's losses had
        self.shown: dict[str, torch.Tensor] = {}  # name: the latest value, for the bar

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        # The figures only watched (gradient norms, D's accuracies) on the steps logged.
        pl_module.monitoring = logged = is_logging_step(trainer)
        scaler = pl_module.grad_scaler
        if scaler is not None and logged:
            # 16-mixed: the GradScaler halves its scale at each step it skips for inf/NaN
            # gradients and doubles it after a run of good ones. scale(1) keeps the value
            # on the device; read before the step, it is the scale the step's losses had.
            self.loss_scale = scaler.scale(torch.ones((), device=pl_module.device))

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        logs = step_logs(outputs)
        if not logs:
            return
        # 16-mixed: a non-finite value (a gradient norm) is a step the GradScaler skipped for
        # overflowing float16 gradients, not a figure of the epoch: the means leave it out,
        # on the device (the step log still shows it).
        skipped_steps = pl_module.grad_scaler is not None
        for name, value in logs.items():
            value, taken = value.detach(), value.numel()
            if skipped_steps:
                finite = value.isfinite()
                value, taken = torch.where(finite, value, 0.0), finite.sum()
            total, count = self.epoch_sums.get(name, (0.0, 0))
            self.epoch_sums[name] = (total + value.sum(), count + taken)
        self.shown |= {name: logs[name] for name in pl_module.progress_bar_metrics
                       if name in logs}
        if not is_logging_step(trainer):
            return
        for name, value in logs.items():
            pl_module.log(f"train/{name}_step", value.detach().flatten()[0],
                          on_step=True, on_epoch=False)
        if self.loss_scale is not None:
            pl_module.log("train/loss_scale", self.loss_scale, on_step=True, on_epoch=False)
            self.loss_scale = None

    def on_train_end(self, trainer, pl_module) -> None:
        pl_module.monitoring = True  # for whatever uses the model next

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        for name, (total, count) in self.epoch_sums.items():
            pl_module.log(f"train/{name}_epoch", total / count, on_step=False, on_epoch=True)
        self.epoch_sums = {}

    def on_validation_end(self, trainer, pl_module) -> None:
        # After the model's on_validation_epoch_end, where it gathers what it shows.
        histograms = pl_module.histograms() if hasattr(pl_module, "histograms") else {}
        if trainer.sanity_checking or not histograms:
            return
        for logger in trainer.loggers:
            if isinstance(logger, TensorBoardLogger):
                for name, values in histograms.items():
                    logger.experiment.add_histogram(name, values, logging_step(trainer))
