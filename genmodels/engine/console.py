"""A quiet console: what the libraries print that a user of genmodels cannot act on.

Each filter names the message and the module that emits it, so every other warning and
log line still shows. (Optuna's alembic "setup plugin" lines are silenced in
conf/hydra/default.yaml, since they come before any job starts.)
"""

import logging
import warnings

from genmodels.engine.lightning_private import quiet_private_warnings


class DropMessages(logging.Filter):
    """Drops the log records whose message starts with one of `prefixes`."""

    def __init__(self, *prefixes: str):
        super().__init__()
        self.prefixes = prefixes

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.prefixes)


def quiet_third_party() -> None:
    quiet_private_warnings()
    # evaluate.py's Inception KID keeps the features of at most num_samples images.
    warnings.filterwarnings("ignore", category=UserWarning, module=r"torchmetrics\.",
                            message=r"Metric `Kernel Inception Distance` will save all extracted")
    # Advertisements for Lightning's cloud services (litlogger, litmodels), once per Trainer.
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, DropMessages) for f in logger.filters):
            logger.addFilter(DropMessages("💡 Tip:"))
    # The `lightning` package gives its logger a console handler of its own: where the root
    # logger has handlers too (Hydra's console and log file), every line printed twice.
    lightning = logging.getLogger("lightning")
    if logging.getLogger().handlers:
        for handler in list(lightning.handlers):
            if type(handler) is logging.StreamHandler:
                lightning.removeHandler(handler)
