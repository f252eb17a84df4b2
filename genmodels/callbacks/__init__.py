"""Callbacks: image grids, config stored in checkpoints."""

from genmodels.callbacks.config_in_checkpoint import ConfigInCheckpoint
from genmodels.callbacks.image_grids import ImageGrids
from genmodels.callbacks.sample_quality import SampleQuality

__all__ = ["ConfigInCheckpoint", "ImageGrids", "SampleQuality"]
