"""Model families: one LightningModule each, sharing the `GenerativeModel` interface."""

from genmodels.models.autoencoder import AutoEncoder
from genmodels.models.base import GenerativeModel
from genmodels.models.gan import GAN
from genmodels.models.vae import VAE

__all__ = ["GAN", "VAE", "AutoEncoder", "GenerativeModel"]
