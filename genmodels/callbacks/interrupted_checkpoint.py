"""A checkpoint saved when training is interrupted (SIGTERM, Ctrl-C, an error), and the exit
that follows a signal."""

import logging
import signal
from pathlib import Path

from lightning.pytorch.callbacks import OnExceptionCheckpoint
from lightning.pytorch.utilities import rank_zero_only
from lightning.pytorch.utilities.exceptions import SIGTERMException

from genmodels.errors import TrainingDiverged

log = logging.getLogger(__name__)


class InterruptedCheckpoint(OnExceptionCheckpoint):
    """Lightning's `OnExceptionCheckpoint`, skipped when nothing was trained yet (an error
    while loading data must not leave a checkpoint of untrained weights behind).

    Lightning turns SIGTERM into an exception at the next batch boundary and Ctrl-C into
    a graceful shutdown; both call `on_exception`, so the state of the last finished batch
    is saved (atomically, like every Lightning checkpoint) before the process exits.

    Nor is anything saved when training diverged: its weights are not finite (the model's
    checkpoint guard would refuse them), and the last good checkpoint stays the newest.
    """

    def __init__(self, dirpath, filename: str = "interrupted") -> None:
        super().__init__(dirpath, filename)
        self.saved = False

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        if trainer.global_step > 0 and not isinstance(exception, TrainingDiverged):
            super().on_exception(trainer, pl_module, exception)
            self.saved = True


def exit_after_signal(stop: SystemExit, trainer, run_dir: Path) -> SystemExit:
    """The exit for a `SystemExit` out of `trainer.fit`. Lightning ends `fit` with
    `SIGTERMException` (exit status 0) after SIGTERM and with `sys.exit(1)` after Ctrl-C,
    both once the interrupted checkpoint is saved; a shell, a scheduler or a script expects
    128 + the signal's number instead (143, 130). Says how to continue the run. Any other
    `SystemExit` is returned unchanged."""
    if isinstance(stop, SIGTERMException):
        signal_number = signal.SIGTERM
    elif isinstance(stop.__context__, KeyboardInterrupt):
        signal_number = signal.SIGINT
    else:
        return stop
    saved = [c for c in trainer.callbacks if isinstance(c, InterruptedCheckpoint) and c.saved]
    report_interruption(signal_number.name, trainer.global_step,
                        Path(saved[0].ckpt_path) if saved else None, run_dir)
    return SystemExit(128 + signal_number)


@rank_zero_only
def report_interruption(signal_name: str, step: int, checkpoint: Path | None,
                        run_dir: Path) -> None:
    from genmodels.engine.rundirs import resume_command

    if checkpoint is None:
        log.warning("Stopped by %s at step %d, before anything was saved to continue from.",
                    signal_name, step)
        return
    log.warning("Stopped by %s at step %d; saved %s. Continue with:\n%s",
                signal_name, step, checkpoint, resume_command(run_dir))
