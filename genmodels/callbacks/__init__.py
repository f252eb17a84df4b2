"""Callbacks: image grids, latent-space views, sample quality, config and RNG states in
checkpoints, interrupt checkpoints, learning rates."""

from genmodels.callbacks.aggregate_posterior import AggregatePosterior
from genmodels.callbacks.config_in_checkpoint import ConfigInCheckpoint
from genmodels.callbacks.image_grids import ImageGrids
from genmodels.callbacks.interrupted_checkpoint import InterruptedCheckpoint
from genmodels.callbacks.latent_grids import LatentGrids
from genmodels.callbacks.latent_scatter import LatentScatter
from genmodels.callbacks.learning_rates import LearningRates
from genmodels.callbacks.model_summary import ModelSummary
from genmodels.callbacks.rng_state import RNGStateInCheckpoint
from genmodels.callbacks.sample_quality import SampleQuality

__all__ = ["AggregatePosterior", "ConfigInCheckpoint", "ImageGrids", "InterruptedCheckpoint",
           "LatentGrids", "LatentScatter", "LearningRates", "ModelSummary",
           "RNGStateInCheckpoint", "SampleQuality"]
