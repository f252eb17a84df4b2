"""Callbacks: image grids, config stored in checkpoints."""

from genmodels.callbacks.config_in_checkpoint import ConfigInCheckpoint
from genmodels.callbacks.image_grids import ImageGrids
from genmodels.callbacks.rng_state import RNGStateInCheckpoint

__all__ = ["ConfigInCheckpoint", "ImageGrids", "RNGStateInCheckpoint"]
