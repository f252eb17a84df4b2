"""Finding and reloading what a training run saved."""

from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

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


def latest_checkpoint(run_dir: str | Path) -> Path:
    """The newest checkpoint of a run: `last.ckpt`, `interrupted.ckpt` when a signal or an
    error stopped the run after its last epoch, or Lightning's SLURM `hpc_ckpt_N.ckpt`."""
    run_dir = Path(run_dir)
    checkpoints = [*(run_dir / "checkpoints").glob("*.ckpt"), *run_dir.glob("hpc_ckpt_*.ckpt")]
    if not checkpoints:
        raise GenmodelsError(f"resume={str(run_dir)!r} has no checkpoints/*.ckpt to continue from.")
    return max(checkpoints, key=lambda path: path.stat().st_mtime)


def resumed_config(cfg: DictConfig) -> DictConfig:
    """The config of the run in `cfg.resume`, to continue it in its own directory.

    Hydra's unresolved record (`.hydra/config.yaml`) is preferred, so that paths follow the
    run directory. Key overrides given with resume (e.g. `trainer.max_epochs=50`) apply on
    top; changing a config group (`model=dcgan`) would not match the checkpoint.
    """
    run_dir = Path(cfg.resume)
    saved = next((p for p in (run_dir / ".hydra" / "config.yaml", run_dir / "config.yaml")
                  if p.is_file()), None)
    if not run_dir.is_dir() or saved is None:
        raise GenmodelsError(
            f"resume={str(run_dir)!r} is not a run directory (it needs config.yaml and "
            "checkpoints/ as written by train.py)."
        )
    old = OmegaConf.load(saved)
    for key, value in resume_overrides(old):
        OmegaConf.update(old, key, value, force_add=True)
    old.paths.output_dir = cfg.paths.output_dir
    old.resume = str(run_dir)
    old.ckpt_path = str(latest_checkpoint(run_dir))
    return old


def resume_overrides(old: DictConfig) -> list[tuple[str, object]]:
    """The command line's `key=value` overrides besides resume=..., under Hydra."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.core.override_parser.overrides_parser import OverridesParser

    if not HydraConfig.initialized():
        return []
    task = [o for o in HydraConfig.get().overrides.task if not o.startswith("resume=")]
    overrides = OverridesParser.create().parse_overrides(task)
    groups = [o.input_line for o in overrides if "." not in o.key_or_group
              and OmegaConf.is_config(old.get(o.key_or_group, {}))]
    if groups:
        raise GenmodelsError(
            f"resume continues a run with its own config, so {', '.join(groups)} cannot change "
            "it; only keys such as trainer.max_epochs=50 can (or start a new run)."
        )
    return [(o.key_or_group, o.value()) for o in overrides]


def check_checkpoint(path: str | Path, model: torch.nn.Module) -> None:
    """Stop before training if a checkpoint to continue from is unreadable or was written
    for another architecture; the file itself is left as it is."""
    path = Path(path)
    if not path.is_file():
        raise GenmodelsError(f"ckpt_path={str(path)!r} is not a file.")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=False)
        state = checkpoint["state_dict"]
    except Exception as error:  # truncated, foreign or not a checkpoint at all
        raise GenmodelsError(f"Cannot read checkpoint {path}: {error!r}") from None
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    found = {k: tuple(v.shape) for k, v in state.items()}
    if expected != found:
        missing = sorted(expected.keys() - found.keys())[:3]
        unexpected = sorted(found.keys() - expected.keys())[:3]
        reshaped = [k for k in expected.keys() & found.keys() if expected[k] != found[k]][:3]
        raise GenmodelsError(
            f"Checkpoint {path} does not match the configured model (missing weights "
            f"{missing}, unexpected {unexpected}, other shapes {reshaped}); resume with the "
            "run's own config."
        )
