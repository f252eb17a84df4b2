"""Every use of a Lightning private (an underscored name) in genmodels, in one place.

Lightning may move or rename any of these in a release without notice, so nothing else in
the package touches them, and tests/test_lightning_private.py checks each one against the
installed Lightning: when a release breaks one, that test fails and names the version.
For each, the public hook that would make it unnecessary is said beside it.

They were written against Lightning `TESTED_LIGHTNING`, the only minor release
pyproject.toml allows.
"""

import warnings
from contextlib import contextmanager

import lightning as L
from lightning.pytorch.core.optimizer import LightningOptimizer
from lightning.pytorch.strategies import DDPStrategy
from lightning.pytorch.utilities.model_summary.model_summary import _format_summary_table

TESTED_LIGHTNING = "2.6"


def is_logging_step(trainer: L.Trainer) -> bool:
    """Whether Lightning's loggers write the current training step
    (`trainer.log_every_n_steps`), so that values are handed to `self.log` only then.
    Public hook wanted: `Trainer.should_update_logs`."""
    return trainer._logger_connector.should_update_logs


def logging_step(trainer: L.Trainer) -> int:
    """The step Lightning logs scalars at: the number of training batches that stepped the
    optimizers (a GAN's `global_step` counts D's and G's steps apart; fused batches take
    several optimizer steps per batch). Images logged at it line up with the curves.
    Public hook wanted: a `Trainer` property for the loggers' step."""
    return trainer.fit_loop.epoch_loop._batches_that_stepped


def set_max_steps(trainer: L.Trainer, max_steps: int) -> None:
    """Change `trainer.max_steps` for the fit under way (a GAN counts generator steps,
    Lightning optimizer steps). The loop classes are private (`_FitLoop`,
    `_TrainingEpochLoop`). Public hook wanted: a settable `Trainer.max_steps`."""
    trainer.fit_loop.epoch_loop.max_steps = max_steps


@contextmanager
def counted_optimizer_step(optimizer: LightningOptimizer):
    """Around a plain `optimizer.optimizer.step()`: what `LightningOptimizer.step` does to
    count it in `global_step` (and so in `max_steps`, checkpoints and resume), without
    the precision plugin's closure and the gradient hooks, which fused batches skip when
    no one listens. Public hook wanted: a step counter that can be advanced."""
    optimizer._on_before_step()
    yield
    optimizer._on_after_step()


def find_unused_parameters(strategy: DDPStrategy) -> None:
    """Tell an already built DDPStrategy to let DDP expect backward passes that reach
    only some parameters (each GAN phase reaches one network). DDPStrategy keeps the
    keyword arguments it passes to DistributedDataParallel in `_ddp_kwargs`.
    Public hook wanted: a read-write `DDPStrategy.kwargs`."""
    strategy._ddp_kwargs["find_unused_parameters"] = True


def format_summary_table(*args, **kwargs) -> str:
    """Lightning's own layout of the model-summary table (a private function of
    `lightning.pytorch.utilities.model_summary`). Public hook wanted: a
    `ModelSummary.format` method to override."""
    return _format_summary_table(*args, **kwargs)


def quiet_private_warnings() -> None:
    """Lightning's own use of a PyTorch API that PyTorch deprecated, warned from its
    private `_pytree` module on every batch: Lightning's to fix, nothing a user can do."""
    warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated",
                            module=r"lightning\.pytorch\.utilities\._pytree")
