"""Callbacks a run's config chooses (conf/callbacks/): image grids, latent-space views,
sample quality, learning rates, interrupt checkpoints, the best checkpoint and early
stopping, the progress bar. What every run has regardless of its config (the divergence
guard, training logs, random streams, the config in checkpoints) is in genmodels/engine/."""

from genmodels.callbacks.aggregate_posterior import AggregatePosterior
from genmodels.callbacks.image_grids import ImageGrids
from genmodels.callbacks.interrupted_checkpoint import InterruptedCheckpoint
from genmodels.callbacks.latent_grids import LatentGrids
from genmodels.callbacks.latent_scatter import LatentScatter
from genmodels.callbacks.learning_rates import LearningRates
from genmodels.callbacks.monitored import BestCheckpoint, EarlyStopping
from genmodels.callbacks.periodic_checkpoint import PeriodicCheckpoint
from genmodels.callbacks.progress_bar import ProgressBar
from genmodels.callbacks.sample_quality import SampleQuality

__all__ = ["AggregatePosterior", "BestCheckpoint", "EarlyStopping", "ImageGrids",
           "InterruptedCheckpoint", "LatentGrids", "LatentScatter", "LearningRates",
           "PeriodicCheckpoint", "ProgressBar", "SampleQuality"]
