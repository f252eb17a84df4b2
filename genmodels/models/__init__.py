"""Model families: one LightningModule each, sharing the `GenerativeModel` interface."""

from genmodels.models.autoencoder import AutoEncoder
from genmodels.models.base import GenerativeModel
from genmodels.models.classifier import ImageClassifier
from genmodels.models.denoising import DenoisingAutoEncoder
from genmodels.models.diffusion import DDPM
from genmodels.models.gan import GAN
from genmodels.models.greedy import GreedyAutoEncoder
from genmodels.models.sparse import SparseAutoEncoder
from genmodels.models.vae import VAE

__all__ = ["DDPM", "GAN", "VAE", "AutoEncoder", "DenoisingAutoEncoder", "GenerativeModel",
           "GreedyAutoEncoder", "ImageClassifier", "SparseAutoEncoder"]
