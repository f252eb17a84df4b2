class GenmodelsError(Exception):
    """A problem with the user's input (config, data, files).

    `train.py` prints its message alone, without a traceback, so the message must say
    what was wrong, with the bad value, and what to do instead.
    """


class TrainingDiverged(GenmodelsError):
    """Training met a NaN or infinite loss, gradient or weight (genmodels/engine/divergence.py).

    `train.py` prints it like any GenmodelsError and exits non-zero; `genmodels.jobs.train`
    records the run as `diverged` in its summary.json first.
    """
