"""Building objects from Hydra config nodes, with user errors kept readable."""

from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import OmegaConf

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


def if_resuming(resume, resuming_value, fresh_value):
    """Config resolver: `${if_resuming:${resume},a,b}` is a when resume=<run dir> is set.
    conf/hydra/default.yaml uses it to keep a resumed run in its own directory."""
    return resuming_value if resume else fresh_value


# Registered on import (train.py imports this module before Hydra composes the config).
OmegaConf.register_new_resolver("if_resuming", if_resuming, replace=True)
