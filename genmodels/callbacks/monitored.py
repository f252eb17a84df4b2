"""The best checkpoint and early stopping, by a validation metric (`callbacks=best`,
`callbacks=early_stopping`)."""

import math

import torch
from lightning.pytorch.callbacks import EarlyStopping as LightningEarlyStopping
from lightning.pytorch.callbacks import ModelCheckpoint

from genmodels.callbacks.sample_quality import SampleQuality
from genmodels.errors import GenmodelsError

# What a model is judged by when the config leaves `monitor` null: its validation loss,
# or the metric and direction its class names (GANs: see GAN.monitored_metric).
DEFAULT_METRIC = ("val/loss", "min")


def model_metric(pl_module) -> tuple[str, str]:
    """The metric and mode (min or max) that judge this model by default."""
    return getattr(pl_module, "monitored_metric", DEFAULT_METRIC)


class MonitoredMetric:
    """A callback that follows one validation metric: `monitor` (null: the model's own,
    set up when training starts) and `mode`, checked against what the model logs on the
    sanity pass (or the first validation) in one sentence naming the valid choices,
    instead of Lightning's error after the first epoch. A `val/` metric the model does
    not log is the sample-quality callback's: it counts on the epochs that callback
    measures only (Lightning would compare its last value again on every other epoch)."""

    key = "callbacks"  # the config node, for messages

    def resolve_monitor(self, pl_module) -> None:
        if self.monitor is None:
            monitor, mode = model_metric(pl_module)
            self.monitor = monitor
            self.set_mode(self.mode_given or mode)
        self.quality: SampleQuality | None = None
        self.checked = False

    def set_mode(self, mode: str) -> None:
        raise NotImplementedError

    def check_mode(self, mode: str | None) -> None:
        if mode not in (None, "min", "max"):
            raise GenmodelsError(f"{self.key}.mode={mode!r}: choose min (lower is better), "
                                 "max, or null (the model's own).")

    def refuse(self, logged) -> None:
        raise GenmodelsError(
            f"{self.key}.monitor={self.monitor!r} is not a validation metric this model logs; "
            f"valid choices: {', '.join(sorted(k for k in logged if k.startswith('val/')))}"
            + (" (or a sample-quality metric, with callbacks=[quality,...])."
               if self.quality is None and not self.checked else "."))

    def check_monitor(self, trainer) -> None:
        if self.checked:
            return
        if self.monitor not in trainer.callback_metrics:
            quality = SampleQuality.of(trainer)
            if quality is None or not self.monitor.startswith("val/"):
                self.refuse(trainer.callback_metrics)
            self.quality = quality
        self.checked = True

    def on_sanity_check_end(self, trainer, pl_module) -> None:
        self.check_monitor(trainer)

    def measured(self, trainer) -> bool:
        """Whether the monitored metric was measured on this validation."""
        self.check_monitor(trainer)
        if self.quality is None:
            return True
        if not self.quality.measures(trainer.current_epoch):
            return False
        if self.monitor not in trainer.callback_metrics:  # not a sample-quality metric
            self.refuse(trainer.callback_metrics)
        return True


class BestCheckpoint(MonitoredMetric, ModelCheckpoint):
    """The checkpoint of the best validation epoch so far, by `monitor` and `mode`:
    checkpoints/best.ckpt, replaced when the metric improves. It is never taken for the
    run's newest checkpoint (resume, generate and evaluate take that unless given
    best.ckpt itself)."""

    key = "callbacks.best_checkpoint"

    def __init__(self, dirpath: str, filename: str = "best", monitor: str | None = None,
                 mode: str | None = None, **kwargs):
        self.check_mode(mode)
        # Saved at the end of validation, before last.ckpt at the end of the epoch: the
        # latter then holds this callback's state as best.ckpt on disk has it.
        kwargs = {"save_top_k": 1, "enable_version_counter": False,
                  "auto_insert_metric_name": False, "save_on_train_epoch_end": False, **kwargs}
        super().__init__(dirpath=dirpath, filename=filename, monitor=monitor,
                         mode=mode or DEFAULT_METRIC[1], **kwargs)
        self.mode_given = mode

    @property
    def state_key(self) -> str:
        # Its file name keys it: Lightning refuses two checkpoint callbacks alike.
        return f"{type(self).__qualname__}{{'filename': {self.filename!r}}}"

    def set_mode(self, mode: str) -> None:
        self.mode = mode
        self.kth_value = torch.tensor(math.inf if mode == "min" else -math.inf)

    def setup(self, trainer, pl_module, stage: str) -> None:
        self.resolve_monitor(pl_module)
        super().setup(trainer, pl_module, stage)

    def _save_topk_checkpoint(self, trainer, monitor_candidates) -> None:
        if self.measured(trainer):
            super()._save_topk_checkpoint(trainer, monitor_candidates)


class EarlyStopping(MonitoredMetric, LightningEarlyStopping):
    """Lightning's EarlyStopping, with `monitor` null for the model's own metric. Its
    count of validations without improvement is kept in checkpoints and continues on
    resume; a patience or min_delta given on the resuming command line applies (Lightning
    would bring back the checkpoint's patience)."""

    key = "callbacks.early_stopping"

    def __init__(self, monitor: str | None = None, mode: str | None = None, **kwargs):
        self.check_mode(mode)
        super().__init__(monitor=monitor, mode=mode or DEFAULT_METRIC[1], **kwargs)
        self.mode_given = mode

    def set_mode(self, mode: str) -> None:
        self.mode = mode
        self.min_delta = abs(self.min_delta) * (1 if mode == "max" else -1)
        self.best_score = torch.tensor(math.inf if mode == "min" else -math.inf)

    def setup(self, trainer, pl_module, stage: str) -> None:
        self.resolve_monitor(pl_module)
        super().setup(trainer, pl_module, stage)

    def check_monitor(self, trainer) -> None:
        # callbacks=early_stopping takes its metric from the best checkpoint: a metric
        # the model does not log is named as the user set it, there.
        best = next((c for c in trainer.callbacks if isinstance(c, BestCheckpoint)
                     and c.monitor == self.monitor), None)
        if best is not None:
            best.check_monitor(trainer)
        super().check_monitor(trainer)

    def load_state_dict(self, state_dict) -> None:
        patience = self.patience
        super().load_state_dict(state_dict)
        self.patience = patience

    def _run_early_stopping_check(self, trainer) -> None:
        if self.measured(trainer):
            super()._run_early_stopping_check(trainer)
