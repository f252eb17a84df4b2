"""Callbacks: image grids, config and RNG states in checkpoints, interrupt checkpoints."""

from genmodels.callbacks.config_in_checkpoint import ConfigInCheckpoint
from genmodels.callbacks.image_grids import ImageGrids
from genmodels.callbacks.interrupted_checkpoint import InterruptedCheckpoint
from genmodels.callbacks.rng_state import RNGStateInCheckpoint

__all__ = ["ConfigInCheckpoint", "ImageGrids", "InterruptedCheckpoint", "RNGStateInCheckpoint"]
