"""Building objects from Hydra config nodes, with user errors kept readable."""

from hydra.errors import InstantiationException
from hydra.utils import instantiate

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
