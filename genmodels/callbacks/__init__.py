"""Callbacks: image grids, config stored in checkpoints, latent-space views."""

from genmodels.callbacks.aggregate_posterior import AggregatePosterior
from genmodels.callbacks.config_in_checkpoint import ConfigInCheckpoint
from genmodels.callbacks.image_grids import ImageGrids
from genmodels.callbacks.latent_grids import LatentGrids

__all__ = ["AggregatePosterior", "ConfigInCheckpoint", "ImageGrids", "LatentGrids"]
