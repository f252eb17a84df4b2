"""Building objects from Hydra config nodes, with user errors kept readable."""

from collections.abc import Callable

from hydra.errors import InstantiationException
from hydra.utils import get_method, instantiate

from genmodels.errors import GenmodelsError


def build(node, **kwargs):
    """`hydra.utils.instantiate`, but a GenmodelsError raised by the object being built
    surfaces as itself rather than wrapped in Hydra's exception chain."""
    try:
        return instantiate(node, **kwargs)
    except InstantiationException as error:
        cause = error.__cause__
        while cause is not None:
            if isinstance(cause, GenmodelsError):
                raise cause from None
            cause = cause.__cause__
        raise


def task_function(path: str) -> Callable:
    """The job that `train.py` runs, named by the config's `task` key (a dotted path to a
    function of the config that returns a metrics dict), e.g. genmodels.training.train."""
    try:
        return get_method(path)
    except Exception:
        raise GenmodelsError(
            f"task={path!r} is not an importable function; use genmodels.training.train or "
            "genmodels.pretraining.pretrain_classifier."
        ) from None
