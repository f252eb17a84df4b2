"""A checkpoint kept every few epochs, beside the last one."""

from lightning.pytorch.callbacks import ModelCheckpoint


class PeriodicCheckpoint(ModelCheckpoint):
    """Lightning's ModelCheckpoint, keyed in checkpoints by its file name as well.

    Lightning tells its checkpoint callbacks apart by their settings (monitor, mode and
    how often they save) and refuses two alike. The periodic checkpoint saved every epoch
    (`callbacks.periodic_checkpoint.every_n_epochs=1`) would be alike the last-checkpoint
    callback, which saves every epoch too: with the file name in its key, both can run.
    """

    @property
    def state_key(self) -> str:
        return f"{type(self).__qualname__}{{'filename': {self.filename!r}}}"
