"""Checking `optimized_metric` against what the model logs, before training."""

import math

import lightning as L

from genmodels.callbacks.sample_quality import SampleQuality
from genmodels.errors import GenmodelsError


class OptimizedMetricCheck(L.Callback):
    """After Lightning's sanity check (a first validation pass on a few batches, before
    any training step), stops with one sentence if `optimized_metric` is not among the
    metrics the model logs, instead of reporting it after the whole training. A `test/`
    name needs `test=true` and its `val/` twin; a `train/` name is checked at the end
    (genmodels.jobs.train.optimized_value). A `val/` name the model does not log is the
    sample-quality callback's, which measures on later epochs only: when training starts
    (a resumed run's epochs are counted then), the run must reach one of them."""

    def __init__(self, name: str, test: bool):
        self.name, self.test = name, test
        self.quality: SampleQuality | None = None  # the callback that logs the metric

    def on_sanity_check_end(self, trainer, pl_module) -> None:
        logged = {k for k in trainer.callback_metrics if k.startswith("val/")}
        valid = logged | ({"test/" + k[4:] for k in logged} if self.test else set())
        stage, _, rest = self.name.partition("/")
        if stage not in ("val", "test") or self.name in valid:
            return
        quality = SampleQuality.of(trainer)
        if quality is not None and stage == "val":
            self.quality = quality
            return
        hint = " (test/ metrics need test=true)" if stage == "test" and not self.test else ""
        raise GenmodelsError(
            f"optimized_metric={self.name!r} is not logged by this model{hint}; valid "
            f"choices: {', '.join(sorted(valid))}."
        )

    def on_train_start(self, trainer, pl_module) -> None:
        """The sample-quality callback measures at the end of the epochs whose number is a
        multiple of its every_n_epochs and that validate (a multiple of
        check_val_every_n_epoch): stop unless this run, from the epoch it starts at to
        max_epochs, has one."""
        if self.quality is None:
            return
        every, validate, start, last = (self.quality.every_n_epochs,
                                        trainer.check_val_every_n_epoch,
                                        trainer.current_epoch, trainer.max_epochs)
        if validate is None or last is None or last < 0:  # validation by steps; no limit
            return

        def first_measured(every: int, validate: int) -> int:
            period = math.lcm(every, validate)
            return (start // period + 1) * period

        first = first_measured(every, validate)
        if first <= last:
            return
        instead = next(f", or {keys}" for keys, ok in (
            ("callbacks.sample_quality.every_n_epochs=1", first_measured(1, validate) <= last),
            ("trainer.check_val_every_n_epoch=1", first_measured(every, 1) <= last),
            ("callbacks.sample_quality.every_n_epochs=1 and trainer.check_val_every_n_epoch=1",
             True)) if ok)
        validated = (f" on the epochs it validates (trainer.check_val_every_n_epoch="
                     f"{validate})" if validate > 1 else "")
        run = (f"trains epochs {start + 1} to {last} (it resumes after epoch {start}; "
               if start else f"ends at epoch {last} (")
        raise GenmodelsError(
            f"optimized_metric={self.name!r} is logged by callbacks.sample_quality every "
            f"{every} epochs{validated}, first at epoch {first}, but this run {run}"
            f"trainer.max_epochs={last}): set trainer.max_epochs={first} or more{instead}."
        )
