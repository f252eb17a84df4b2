"""genmodels: train and compare autoencoders, VAEs and GANs with Lightning and Hydra."""

from genmodels.errors import GenmodelsError

__all__ = ["GenmodelsError"]
