"""Callbacks: image grids, latent-space maps, config stored in checkpoints."""

from genmodels.callbacks.config_in_checkpoint import ConfigInCheckpoint
from genmodels.callbacks.image_grids import ImageGrids
from genmodels.callbacks.latent_scatter import LatentScatter

__all__ = ["ConfigInCheckpoint", "ImageGrids", "LatentScatter"]
