"""A checkpoint saved when training is interrupted (SIGTERM, Ctrl-C, an error), and the exit
that follows a signal."""

import logging
import signal
import threading
from pathlib import Path

from lightning.pytorch.callbacks import OnExceptionCheckpoint
from lightning.pytorch.utilities import rank_zero_only
from lightning.pytorch.utilities.exceptions import SIGTERMException

from genmodels.errors import TrainingDiverged

log = logging.getLogger(__name__)


class InterruptedCheckpoint(OnExceptionCheckpoint):
    """Lightning's `OnExceptionCheckpoint`, skipped when this start trained nothing yet (an
    error while loading data must not leave a checkpoint of untrained weights behind, nor
    a resumed run a copy of the checkpoint it resumed from).

    Lightning turns SIGTERM into an exception once the step under way has finished, and
    calls `on_exception`: the state after that whole step is saved, and a resumed run
    continues exactly. Ctrl-C (SIGINT) would stop the step midway (after D's update and
    before G's, say), so during training it is handled as SIGTERM is; a second Ctrl-C
    stops at once, without a checkpoint. (Under DDP each process gets Ctrl-C and Lightning
    handles it itself: docs/usage.md.)

    Nor is anything saved when training diverged: its weights are not finite (the model's
    checkpoint guard would refuse them), and the last good checkpoint stays the newest.
    A checkpoint that cannot be written (a full disk) is reported and the error that
    stopped training is the one raised.
    """

    def __init__(self, dirpath, filename: str = "interrupted") -> None:
        super().__init__(dirpath, filename)
        self.saved = False
        self.ctrl_c = False  # whether Ctrl-C stopped the run
        self.sigint_handler = None  # the one to restore after training
        self.started_at: int | None = None  # the global step this start's training began at

    def on_train_start(self, trainer, pl_module) -> None:
        self.started_at = trainer.global_step
        lightning_sigterm = signal.getsignal(signal.SIGTERM)
        if (trainer.world_size > 1 or not callable(lightning_sigterm)
                or threading.current_thread() is not threading.main_thread()):
            return

        def finish_the_step_then_stop(signal_number, frame):
            signal.signal(signal.SIGINT, self.sigint_handler)  # a second Ctrl-C: at once
            self.ctrl_c = True
            lightning_sigterm(signal.SIGTERM, frame)

        self.sigint_handler = signal.signal(signal.SIGINT, finish_the_step_then_stop)

    def on_train_end(self, trainer, pl_module) -> None:
        self.restore_sigint()

    def restore_sigint(self) -> None:
        if self.sigint_handler is not None:
            signal.signal(signal.SIGINT, self.sigint_handler)
            self.sigint_handler = None

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        self.restore_sigint()
        # Nothing trained by this start: training never began, or took no step yet.
        if self.started_at in (None, trainer.global_step) or \
                isinstance(exception, TrainingDiverged):
            return
        try:
            super().on_exception(trainer, pl_module, exception)
        except Exception as error:  # e.g. the full disk that stopped training: keep that
            log.error("Could not save %s: %s", self.ckpt_path, error)
            return
        self.saved = True


def exit_after_signal(stop: SystemExit, trainer, run_dir: Path) -> SystemExit:
    """The exit for a `SystemExit` out of `trainer.fit`. Lightning ends `fit` with
    `SIGTERMException` (exit status 0) after SIGTERM and with `sys.exit(1)` after Ctrl-C,
    both once the interrupted checkpoint is saved; a shell, a scheduler or a script expects
    128 + the signal's number instead (143, 130). Says how to continue the run. Any other
    `SystemExit` is returned unchanged."""
    interrupted = [c for c in trainer.callbacks if isinstance(c, InterruptedCheckpoint)]
    if isinstance(stop, SIGTERMException):
        ctrl_c = any(c.ctrl_c for c in interrupted)
        signal_number = signal.SIGINT if ctrl_c else signal.SIGTERM
    elif isinstance(stop.__context__, KeyboardInterrupt):
        signal_number = signal.SIGINT
    else:
        return stop
    saved = [c for c in interrupted if c.saved]
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
