"""Callbacks: image grids, latent-space views, config stored in checkpoints."""

from genmodels.callbacks.aggregate_posterior import AggregatePosterior
from genmodels.callbacks.config_in_checkpoint import ConfigInCheckpoint
from genmodels.callbacks.image_grids import ImageGrids
from genmodels.callbacks.latent_grids import LatentGrids
from genmodels.callbacks.latent_scatter import LatentScatter

__all__ = ["AggregatePosterior", "ConfigInCheckpoint", "ImageGrids", "LatentGrids",
           "LatentScatter"]
