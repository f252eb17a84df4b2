"""Checking `optimized_metric` against what the model logs, before training."""

import lightning as L

from genmodels.callbacks.sample_quality import SampleQuality
from genmodels.errors import GenmodelsError


class OptimizedMetricCheck(L.Callback):
    """After Lightning's sanity check (a first validation pass on a few batches, before
    any training step), stops with one sentence if `optimized_metric` is not among the
    metrics the model logs, instead of reporting it after the whole training. A `test/`
    name needs `test=true` and its `val/` twin; a `train/` name is checked at the end
    (genmodels.jobs.train.optimized_value), as are sample-quality metrics, which their
    callback logs on later epochs only."""

    def __init__(self, name: str, test: bool):
        self.name, self.test = name, test

    def on_sanity_check_end(self, trainer, pl_module) -> None:
        logged = {k for k in trainer.callback_metrics if k.startswith("val/")}
        valid = logged | ({"test/" + k[4:] for k in logged} if self.test else set())
        stage, _, rest = self.name.partition("/")
        later = any(isinstance(c, SampleQuality) for c in trainer.callbacks)
        if stage not in ("val", "test") or self.name in valid or (later and stage == "val"):
            return
        hint = " (test/ metrics need test=true)" if stage == "test" and not self.test else ""
        raise GenmodelsError(
            f"optimized_metric={self.name!r} is not logged by this model{hint}; valid "
            f"choices: {', '.join(sorted(valid))}."
        )
