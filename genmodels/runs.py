"""Finding and reloading what a training run saved."""

from pathlib import Path

import torch

from genmodels.callbacks.config_in_checkpoint import ConfigInCheckpoint
from genmodels.config import build
from genmodels.errors import GenmodelsError
from genmodels.models.base import GenerativeModel


def find_checkpoint(path: str | Path) -> Path:
    """A checkpoint file as given, or a run directory's `checkpoints/last.ckpt`."""
    path = Path(path)
    if path.is_dir():
        path = path / "checkpoints" / "last.ckpt"
    if not path.is_file():
        raise GenmodelsError(f"No checkpoint at {path}: give a .ckpt file or a run directory.")
    return path


def read_checkpoint(path: str | Path, map_location: str = "cpu") -> dict:
    """The saved dictionary of a genmodels checkpoint (file or run directory)."""
    checkpoint_path = find_checkpoint(path)
    try:
        checkpoint = torch.load(checkpoint_path, map_location=map_location, weights_only=False)
    except Exception as error:  # a truncated or foreign file: say which one
        raise GenmodelsError(f"Cannot read checkpoint {checkpoint_path}: {error}") from None
    if ConfigInCheckpoint.key not in checkpoint:
        raise GenmodelsError(f"{checkpoint_path} was not written by genmodels (no config in it).")
    return checkpoint


def load_config(path: str | Path) -> dict:
    """The resolved training config stored in a checkpoint (file or run directory)."""
    return read_checkpoint(path)[ConfigInCheckpoint.key]


def load_model(path: str | Path, map_location: str = "cpu") -> GenerativeModel:
    """Rebuild a trained model, in eval mode, from a checkpoint or run directory."""
    checkpoint = read_checkpoint(path, map_location)
    model = build(checkpoint[ConfigInCheckpoint.key]["model"])
    model.load_state_dict(checkpoint["state_dict"])
    return model.eval()
