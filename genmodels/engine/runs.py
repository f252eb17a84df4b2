"""Finding and reloading what a training run saved."""

import csv
import logging
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf

from genmodels.config import build
from genmodels.engine.config_in_checkpoint import ConfigInCheckpoint
from genmodels.engine.rundirs import as_override, run_choices, run_directory
from genmodels.errors import GenmodelsError
from genmodels.files import check_intact, write_text_atomically
from genmodels.models.base import GenerativeModel

log = logging.getLogger(__name__)


def find_checkpoint(path: str | Path) -> Path:
    """A checkpoint file as given, or a run directory's newest checkpoint (`last.ckpt`,
    or `interrupted.ckpt` when a signal or an error stopped the run after it)."""
    path = Path(path)
    if path.is_dir():
        if not run_checkpoints(path):
            raise GenmodelsError(f"No checkpoint in {path / 'checkpoints'}: give a .ckpt "
                                 "file or the directory of a run that has trained.")
        path = latest_checkpoint(path)
        log.info("Checkpoint: %s (the run's newest)", path)
    if not path.is_file():
        raise GenmodelsError(f"No checkpoint at {path}: give a .ckpt file or a run directory.")
    return path


def checkpoint_of(cfg: DictConfig) -> Path:
    """The checkpoint a generate or evaluate command names: run=<run directory> or
    ckpt=<checkpoint file>, exactly one."""
    if bool(cfg.get("run")) == bool(cfg.get("ckpt")):
        raise GenmodelsError("Give exactly one of run=<run directory> or ckpt=<checkpoint file>.")
    return find_checkpoint(cfg.run or cfg.ckpt)


def read_checkpoint(path: str | Path, map_location: str = "cpu") -> dict:
    """The saved dictionary of a genmodels checkpoint (file or run directory)."""
    checkpoint_path = find_checkpoint(path)
    check_intact(checkpoint_path)
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
    return model_from_checkpoint(read_checkpoint(path, map_location))


def model_from_checkpoint(checkpoint: dict) -> GenerativeModel:
    """The trained model, in eval mode, of a checkpoint already read (`read_checkpoint`)."""
    model = build(checkpoint[ConfigInCheckpoint.key]["model"])
    model.load_state_dict(checkpoint["state_dict"])
    return model.eval()


def run_checkpoints(run_dir: str | Path) -> list[Path]:
    """A run's checkpoints: `checkpoints/*.ckpt` (last, periodic, interrupted, best) and
    Lightning's SLURM `hpc_ckpt_N.ckpt`."""
    run_dir = Path(run_dir)
    return [*(run_dir / "checkpoints").glob("*.ckpt"), *run_dir.glob("hpc_ckpt_*.ckpt")]


# The file name start of the best checkpoint (conf/callbacks/best.yaml).
BEST_CHECKPOINT_PREFIX = "best"


def is_best_checkpoint(path: Path) -> bool:
    """Whether a checkpoint is the best one by a validation metric (callbacks=best writes
    checkpoints/best.ckpt), not the run's newest state."""
    return path.name.startswith(BEST_CHECKPOINT_PREFIX)


def latest_checkpoint(run_dir: str | Path) -> Path:
    """The newest intact checkpoint of a run: `last.ckpt`, `interrupted.ckpt` when a signal
    or an error stopped the run after its last epoch, or Lightning's SLURM
    `hpc_ckpt_N.ckpt`. A damaged one (empty, cut short, or not matching its recorded
    checksum) is passed over with a warning. The best checkpoint (`best*.ckpt`, of an
    earlier epoch, or of a validation within an epoch) comes after all others, whatever
    its time: a resume never goes back to it while the run has another."""
    checkpoints = run_checkpoints(run_dir)
    if not checkpoints:
        raise GenmodelsError(f"resume={str(run_dir)!r} has no checkpoints/*.ckpt to continue from.")
    damaged = []
    for path in sorted(checkpoints, key=lambda path: (not is_best_checkpoint(path),
                                                      path.stat().st_mtime), reverse=True):
        try:
            check_intact(path)
        except GenmodelsError as error:
            log.warning("Skipping a damaged checkpoint: %s", error)
            damaged.append(str(error))
            continue
        return path
    raise GenmodelsError(f"No whole checkpoint in {run_dir}: {' '.join(damaged)}")


def resumed_config(cfg: DictConfig) -> tuple[DictConfig, dict[str, dict]]:
    """The config of the run in `cfg.resume`, to continue it in its own directory, and the
    optimizer settings changed on the command line ({"optimizer": {"lr": 1e-4}}), which
    must be applied to the optimizers restored from the checkpoint (OptimizerOverrides).

    Hydra's unresolved record (`.hydra/config.yaml`) is preferred, so that paths follow the
    run directory. Key overrides given with resume (e.g. `trainer.max_epochs=50`) apply on
    top; those that cannot (another model, seed, ...) stop with a sentence saying why.
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
    overrides = resume_overrides(old, run_dir)
    optimizers = optimizer_overrides(old, overrides)
    for key, value in overrides:
        OmegaConf.update(old, key, value, force_add=True)
    old.paths.output_dir = cfg.paths.output_dir
    old.resume = str(run_dir)
    old.ckpt_path = str(latest_checkpoint(run_dir))
    return old, optimizers


# Keys a resumed run takes from its checkpoint or its directory, whatever the command says.
FIXED_ON_RESUME = {
    "seed": "the run continues the random state saved in its checkpoint",
    "ckpt_path": "resume continues from the run's newest checkpoint",
    "paths": "the run stays in its own directory",
    "task": "the run continues the job it was started with",
}


def resume_overrides(old: DictConfig, run_dir: Path) -> list[tuple[str, object]]:
    """The command line's `key=value` overrides besides resume=..., under Hydra. Group
    choices equal to the run's own are left out (train.py adds them, so that Hydra
    composes the run's config); other groups, and keys in FIXED_ON_RESUME, are refused."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.core.override_parser.overrides_parser import OverridesParser

    if not HydraConfig.initialized():
        return []
    task = [o for o in HydraConfig.get().overrides.task if not o.startswith("resume=")]
    overrides = OverridesParser.create().parse_overrides(task)
    own = run_choices(run_dir)
    keys = []
    for override in overrides:
        key = override.key_or_group
        if "." not in key and OmegaConf.is_config(old.get(key, {})):  # a config group
            if own.get(key, object()) == override.value():
                continue
            was = f" (the run has {key}={as_override(own[key])})" if own.get(key) else ""
            raise GenmodelsError(
                f"resume continues a run with its own config, so {override.input_line} "
                f"cannot change it{was}; only keys such as trainer.max_epochs=50 can (or "
                "start a new run)."
            )
        if key.split(".")[0] in FIXED_ON_RESUME:
            raise GenmodelsError(f"{override.input_line} cannot apply when resuming: "
                                 f"{FIXED_ON_RESUME[key.split('.')[0]]}.")
        keys.append((key, override.value()))
    return keys


def optimizer_overrides(old: DictConfig, overrides: list[tuple[str, object]]
                        ) -> dict[str, dict[str, object]]:
    """Overrides of an optimizer's settings (`model.<optimizer node>.<key>`), by node. A
    restored optimizer keeps its type, and its learning rate when a scheduler sets it."""
    import hydra.utils

    changed: dict[str, dict[str, object]] = {}
    for key, value in overrides:
        parts = key.split(".")
        node = OmegaConf.select(old, ".".join(parts[:2]), default=None)
        if len(parts) != 3 or parts[0] != "model" or not is_optimizer_node(node, hydra.utils):
            continue
        if parts[2] in ("_target_", "_partial_"):
            raise GenmodelsError(
                f"{key}={value} cannot apply when resuming: the optimizer state in the "
                f"checkpoint is a {node._target_}'s; start a new run to change optimizer.")
        if parts[2] == "lr" and old.model.get("scheduler") is not None:
            raise GenmodelsError(
                f"{key}={value} cannot apply when resuming: the run's learning-rate "
                "scheduler (model.scheduler) sets the rate; start a new run to change it.")
        changed.setdefault(parts[1], {})[parts[2]] = value
    return changed


def is_optimizer_node(node, hydra_utils) -> bool:
    if not OmegaConf.is_dict(node) or "_target_" not in node:
        return False
    try:
        return issubclass(hydra_utils.get_class(node._target_), torch.optim.Optimizer)
    except Exception:  # not a class, or not importable: not an optimizer
        return False


class OptimizerOverrides(L.Callback):
    """Applies the optimizer settings given on a resuming command line (e.g.
    `model.optimizer.lr=1e-4`) to the optimizer states loaded from the checkpoint, which
    would otherwise bring back the old ones, and says so. The model's `optimizer_nodes`
    name the config node of each of its optimizers."""

    def __init__(self, overrides: dict[str, dict[str, object]]):
        self.overrides = overrides

    def on_load_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        # Lightning restores the optimizers from this dictionary after this hook.
        states = checkpoint.get("optimizer_states", [])
        for node, state in zip(pl_module.optimizer_nodes, states, strict=False):
            for key, value in self.overrides.get(node, {}).items():
                before = {group.get(key) for group in state["param_groups"]}
                for group in state["param_groups"]:
                    group[key] = tuple(value) if isinstance(value, list) else value
                if trainer.is_global_zero:
                    log.info("Resuming with model.%s.%s=%s (the checkpoint's optimizer had "
                             "%s).", node, key, value, ", ".join(map(str, before)))


def keep_csv_history(loggers) -> None:
    """Lightning's CSVLogger deletes the `metrics.csv` it finds when it starts: a resumed
    run would lose every row logged before. Put those rows back, for the new ones to
    follow (call before anything is logged)."""
    if rank_zero_only.rank != 0:
        return
    for logger in loggers:
        if not isinstance(logger, CSVLogger):
            continue
        path = Path(logger.log_dir) / ExperimentWriter.NAME_METRICS_FILE
        kept = path.read_text() if path.is_file() else ""
        writer = logger.experiment  # deletes the file
        if kept.strip():
            write_text_atomically(path, kept)
            writer.metrics_keys = next(csv.reader([kept.splitlines()[0]]))


def check_checkpoint(path: str | Path, model: torch.nn.Module, fused_batches: int = 1,
                     max_epochs: int | None = None, extra_epochs: int | None = None) -> int | None:
    """Stop before training if a checkpoint to continue from is unreadable, was written
    for another architecture, switches speed.fused_batches between 1 and more, or has
    already trained `max_epochs` epochs (Lightning would only test again); the file itself
    is left as it is. Returns the max_epochs to train to: `max_epochs`, or with
    `extra_epochs` that many beyond the checkpoint's."""
    path = Path(path)
    if not path.is_file():
        raise GenmodelsError(f"ckpt_path={str(path)!r} is not a file.")
    check_intact(path)
    try:
        # Memory-mapped: only the shapes are read here; Lightning loads the weights later.
        checkpoint = torch.load(path, map_location="cpu", weights_only=False, mmap=True)
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
    done = (((checkpoint.get("loops") or {}).get("fit_loop") or {}).get("epoch_progress")
            or {}).get("current", {}).get("processed")
    if extra_epochs is not None:
        max_epochs = (done or 0) + extra_epochs
    if max_epochs not in (None, -1) and done is not None and done >= max_epochs:
        raise GenmodelsError(
            f"Checkpoint {path} has trained {done} epochs and trainer.max_epochs={max_epochs}: "
            f"nothing is left to train. Continue for more epochs, e.g. "
            f"resume={run_directory(path)} extra_epochs=10 (or trainer.max_epochs={done + 10}).")
    # Lightning keeps the step count of automatic and of manual optimization (fused
    # batches) apart: switching would restart trainer.global_step at 0.
    saved = ((checkpoint.get("genmodels_config") or {}).get("speed") or {}).get("fused_batches", 1)
    if (saved > 1) != (fused_batches > 1):
        keep = "speed.fused_batches=1" if saved == 1 else "any speed.fused_batches above 1"
        raise GenmodelsError(
            f"Checkpoint {path} was trained with speed.fused_batches={saved}, and Lightning "
            f"counts the steps of fused and unfused training apart: continue it with {keep}.")
    return max_epochs
