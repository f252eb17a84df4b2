"""A checkpoint saved when training is interrupted (SIGTERM, Ctrl-C, an error)."""

from lightning.pytorch.callbacks import OnExceptionCheckpoint


class InterruptedCheckpoint(OnExceptionCheckpoint):
    """Lightning's `OnExceptionCheckpoint`, skipped when nothing was trained yet (an error
    while loading data must not leave a checkpoint of untrained weights behind).

    Lightning turns SIGTERM into an exception at the next batch boundary and Ctrl-C into
    a graceful shutdown; both call `on_exception`, so the state of the last finished batch
    is saved (atomically, like every Lightning checkpoint) before the process exits.
    """

    def on_exception(self, trainer, *args, **kwargs) -> None:
        if trainer.global_step > 0:
            super().on_exception(trainer, *args, **kwargs)
