"""Stopping a run that diverged: NaN or infinite losses, gradients or weights."""

from collections.abc import Mapping
from pathlib import Path

import lightning as L
import torch

from genmodels.engine.lightning_private import is_logging_step
from genmodels.engine.training_logs import step_logs
from genmodels.errors import TrainingDiverged


class DivergenceGuard(L.Callback):
    """Stops training with TrainingDiverged when a value the model watches (its
    `watched_for_divergence`: the training logs that name a loss or a gradient norm) or a
    weight becomes NaN or infinite, and never lets a checkpoint of such weights replace a
    good one. The message says between which steps it happened (the model's
    `training_progress()`), names the last good checkpoint and ends with the model's
    `divergence_advice`.

    Nothing is read back from the device on ordinary steps (that waits for the GPU: a sync
    per step would slow small models down): whether the values are finite is recorded on
    the device and read on logging steps (whose logging syncs anyway), before every
    checkpoint and at the end of training. Under 16-mixed precision a non-finite value is
    not recorded: it is a step the GradScaler skips (and halves its scale for), normal in
    mixed precision; training stops only when the scale falls below `min_loss_scale`.
    """

    # 30 skipped steps in a row from the GradScaler's initial scale of 2^16.
    min_loss_scale = 2.0**-14

    def __init__(self):
        self.nonfinite: dict[str, torch.Tensor] = {}  # what: device flag
        self.finite_until = "the start"  # where check() last found all finite

    def on_train_start(self, trainer, pl_module) -> None:
        self.finite_until = pl_module.training_progress()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        logs = step_logs(outputs)
        if logs and pl_module.grad_scaler is None:
            self.record(pl_module.watched_for_divergence, logs)
        if is_logging_step(trainer):
            self.check(trainer, pl_module)

    def record(self, watched: Mapping[str, str], logs: Mapping[str, torch.Tensor]) -> None:
        """Record, on the device, whether the watched values among `logs` are finite."""
        by_what: dict[str, list[torch.Tensor]] = {}
        for name, what in watched.items():
            if name in logs:
                by_what.setdefault(what, []).append(logs[name].detach().float().flatten())
        for what, values in by_what.items():
            bad = torch.cat(values).isfinite().logical_not().any()
            self.nonfinite[what] = bad if what not in self.nonfinite else self.nonfinite[what] | bad

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        # Raising here stops Lightning before it writes anything: a checkpoint with NaN
        # weights never replaces a good one.
        self.check(trainer, pl_module, checkpoint["state_dict"])

    def on_train_end(self, trainer, pl_module) -> None:
        self.check(trainer, pl_module, pl_module.state_dict())

    def check(self, trainer, pl_module, weights: Mapping[str, torch.Tensor] | None = None):
        """Raise TrainingDiverged if a recorded value was not finite, the 16-mixed loss
        scale collapsed, or one of `weights` (a state dict) is not finite."""
        flags = list(self.nonfinite.items())
        reasons = []
        if flags:
            found = torch.stack([flag for _, flag in flags]).tolist()
            reasons += [f"the {what}" for (what, _), bad in zip(flags, found, strict=True) if bad]
        if weights is not None:
            floats = [w for w in weights.values() if torch.is_floating_point(w)]
            if floats and not torch.stack([w.isfinite().all() for w in floats]).all():
                reasons.append("the weights")
        scaler = pl_module.grad_scaler
        if scaler is not None and (scale := scaler.get_scale()) < self.min_loss_scale:
            reasons.append(f"the gradients at every step (the 16-mixed loss scale fell to "
                           f"{scale:.3g}, halved at each skipped step)")
        # Every DDP process stops, or none (one alone would leave the others waiting).
        if not trainer.strategy.reduce_boolean_decision(bool(reasons), all=False):
            self.finite_until = pl_module.training_progress()
            return
        checkpoint = last_checkpoint(trainer)
        kept = (f"the last good checkpoint is {checkpoint}" if checkpoint is not None
                else "no checkpoint was saved before")
        raise TrainingDiverged(
            f"Training diverged: {' and '.join(reasons) or 'a value on another process'} "
            f"became NaN or infinite between {self.finite_until} and "
            f"{pl_module.training_progress()}; nothing from these steps was saved and {kept}; "
            f"{pl_module.divergence_advice}.")


def last_checkpoint(trainer: L.Trainer) -> Path | None:
    """The newest checkpoint in the folders the trainer's callbacks save to, or the one
    training started from."""
    folders = {Path(c.dirpath) for c in trainer.callbacks if getattr(c, "dirpath", None)}
    saved = [path for folder in folders for path in folder.glob("*.ckpt")]
    if trainer.ckpt_path and Path(trainer.ckpt_path).is_file():
        saved.append(Path(trainer.ckpt_path))
    return max(saved, key=lambda path: path.stat().st_mtime, default=None)
