"""The training job behind `train.py`: build everything from the config, then fit."""

import copy
import json
import logging
import math
import os
import warnings
from pathlib import Path

import lightning as L
from hydra.core.hydra_config import HydraConfig
from hydra.errors import InstantiationException
from lightning.pytorch.callbacks import ProgressBar
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.strategies import DDPStrategy, StrategyRegistry
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf

from genmodels.callbacks.interrupted_checkpoint import exit_after_signal
from genmodels.callbacks.optimized_metric import OptimizedMetricCheck
from genmodels.config import (
    build,
    check_accelerator,
    check_learning_rates,
    check_override_types,
    check_run_options,
    check_whole_number,
)
from genmodels.engine import essential_callbacks
from genmodels.engine.checkpoint_io import SafeCheckpointIO
from genmodels.engine.config_in_checkpoint import ConfigInCheckpoint
from genmodels.engine.console import quiet_third_party
from genmodels.engine.fused_batches import fuse_batches, fused_batches
from genmodels.engine.hparams import curated_hparams, log_hparams_session
from genmodels.engine.lightning_private import find_unused_parameters
from genmodels.engine.model_summary import ModelSummary
from genmodels.engine.rundirs import RunDirectory, is_first_process, save_hydra_record
from genmodels.engine.runs import (
    OptimizerOverrides,
    check_checkpoint,
    keep_csv_history,
    latest_checkpoint,
    resumed_config,
)
from genmodels.engine.speed import configure_backends, optimize_model
from genmodels.errors import GenmodelsError, TrainingDiverged
from genmodels.files import write_text_atomically

log = logging.getLogger(__name__)

# With an on-exception checkpoint among the callbacks, Lightning treats every fit as a
# continuation from the "last" checkpoint and warns when there is none. A fresh run has
# none by construction (check_fresh_output_dir), and resumes pass ckpt_path explicitly.
warnings.filterwarnings("ignore", message=r".*ckpt_path=None\)` was called without a model")
warnings.filterwarnings("ignore", message=r".*is set, but there is no last checkpoint available")
# Resuming: the CSV logger's earlier rows are kept (keep_csv_history), not deleted, and
# the checkpoint folder is the run's own.
warnings.filterwarnings("ignore", message=r".*Checkpoint directory .* exists and is not empty")
warnings.filterwarnings("ignore", message=r".*Previous log files in this directory will be deleted")


def choose_strategy(strategy, model: L.LightningModule):
    """The trainer's strategy, as configured, except that a model with manual optimization
    (GANs) gets DDP with `find_unused_parameters=True` however DDP was asked for ("ddp",
    "ddp_spawn", "ddp_find_unused_parameters_false", a DDPStrategy object or `_target_`):
    each of its backward passes reaches one network only, which DDP must be told to expect
    (without it, the second step stops with DDP's "Expected to have finished reduction")."""
    if model.automatic_optimization:
        return strategy
    if isinstance(strategy, DictConfig):
        strategy = build(strategy)
    if isinstance(strategy, str) and strategy in StrategyRegistry:
        entry = StrategyRegistry[strategy]
        if entry["strategy"] is not DDPStrategy:
            return strategy
        wanted = {**entry["init_params"], "find_unused_parameters": True}
        # The registered name of the same DDP with unused parameters, so that Lightning
        # sees the kind of spelling it was given (e.g. ddp_spawn -> ddp_spawn_find_...).
        for name in StrategyRegistry.available_strategies():
            if (StrategyRegistry[name]["strategy"] is DDPStrategy
                    and StrategyRegistry[name]["init_params"] == wanted):
                return name
        return DDPStrategy(**wanted)
    if type(strategy) is DDPStrategy:  # subclasses (DeepSpeed) take other arguments
        find_unused_parameters(strategy)
    return strategy


# What a run leaves in its directory, besides checkpoints, that a new run would rewrite.
RUN_RECORDS = ("config.yaml", "summary.json", ".hydra/config.yaml")


def check_fresh_output_dir(cfg: DictConfig, output_dir: Path) -> None:
    """Refuse to train over another run's checkpoints or records, unless continuing that
    run (a SLURM job requeued into its own directory continues it too)."""
    if cfg.get("ckpt_path") is not None:
        return
    checkpoint_dir = output_dir / "checkpoints"
    if any(checkpoint_dir.glob("*.ckpt")):
        raise GenmodelsError(
            f"{checkpoint_dir} already holds checkpoints; refusing to overwrite them. "
            f"Start a new run directory, or continue this run with resume={output_dir}."
        )
    # Other DDP processes start when the first has written its own records.
    records = [name for name in RUN_RECORDS if (output_dir / name).is_file()]
    if records and is_first_process() and not slurm_restarts():
        raise GenmodelsError(
            f"{output_dir} holds another run's records ({', '.join(records)}) and no "
            "checkpoint to continue it from; a new run would rewrite them. Start a new run "
            "directory (leave hydra.run.dir unset, or give a new one).")


def build_loggers(nodes: DictConfig) -> list:
    """The loggers the config names; one that needs a package this environment lacks
    (logger=wandb, logger=mlflow) says which, in one sentence."""
    loggers = []
    for name, node in nodes.items():
        if node is None:
            continue
        try:
            loggers.append(build(node))
        except InstantiationException as error:
            if not isinstance(error.__cause__, ModuleNotFoundError):
                raise
            raise GenmodelsError(f"logger={name} needs a package that is not installed: "
                                 f"{error.__cause__}") from None
    return loggers


def check_extra_epochs(cfg: DictConfig) -> None:
    """extra_epochs=N continues a checkpoint for N more epochs: it needs one, and says
    what trainer.max_epochs would say absolutely."""
    extra = cfg.get("extra_epochs")
    if extra is None:
        return
    check_whole_number("extra_epochs", extra, 1)
    if cfg.get("ckpt_path") is None:
        raise GenmodelsError(f"extra_epochs={extra} counts from a checkpoint's epochs: use it "
                             "with resume=<run dir> (or ckpt_path=); a new run takes "
                             "trainer.max_epochs.")
    if HydraConfig.initialized() and any(o.split("=")[0].lstrip("+~") == "trainer.max_epochs"
                                         for o in HydraConfig.get().overrides.task):
        raise GenmodelsError("Give trainer.max_epochs (epochs in all) or extra_epochs "
                             "(epochs beyond the checkpoint's), not both.")


def slurm_restarts() -> int:
    """How often SLURM requeued this job (after pre-emption or a time limit)."""
    return int(os.environ.get("SLURM_RESTART_COUNT", "0") or 0)


def requeued_on_slurm(output_dir: Path) -> bool:
    """A SLURM job requeued after pre-emption or a time limit runs again in its own
    directory: it then continues from that run's newest checkpoint."""
    return slurm_restarts() > 0 and any(output_dir.glob("**/*.ckpt"))


def train(cfg: DictConfig) -> dict[str, float]:
    """Train `cfg.model` on `cfg.dataset`; return the final metrics (val/..., test/...)."""
    check_override_types()
    quiet_third_party()
    command = copy.deepcopy(cfg)  # as composed from the command line, recorded in .hydra/
    restored_optimizer_settings = {}
    if cfg.get("resume") is not None and not str(cfg.resume).strip():
        raise GenmodelsError("resume= is empty: give the run directory to continue, e.g. "
                             "resume=logs/runs/<run>.")
    if cfg.get("resume"):
        cfg, restored_optimizer_settings = resumed_config(cfg)
    output_dir = Path(cfg.paths.output_dir)
    if cfg.get("ckpt_path") is None and requeued_on_slurm(output_dir):
        cfg.ckpt_path = str(latest_checkpoint(output_dir))
    check_fresh_output_dir(cfg, output_dir)
    check_run_options(cfg)
    check_accelerator(cfg.trainer)
    check_learning_rates(cfg.model)
    fused = fused_batches(cfg.get("speed"))
    configure_backends(cfg.get("speed"))
    L.seed_everything(cfg.seed, workers=True, verbose=False)

    datamodule = build(cfg.dataset)
    model = build(cfg.model)
    check_extra_epochs(cfg)
    if cfg.get("ckpt_path") is not None:
        # Before Lightning touches anything.
        cfg.trainer.max_epochs = check_checkpoint(cfg.ckpt_path, model, fused,
                                                  cfg.trainer.get("max_epochs"),
                                                  cfg.get("extra_epochs"))
    model = optimize_model(model, cfg.get("speed"))
    config = OmegaConf.to_container(cfg, resolve=True)
    callbacks = [build(c) for c in (cfg.get("callbacks") or {}).values() if c is not None]
    if not cfg.trainer.get("enable_progress_bar", True):
        callbacks = [c for c in callbacks if not isinstance(c, ProgressBar)]
    callbacks += [*essential_callbacks(cfg.seed), ConfigInCheckpoint(config),
                  OptimizerOverrides(restored_optimizer_settings)]
    if cfg.get("optimized_metric"):  # checked on the sanity pass, before training
        callbacks.append(OptimizedMetricCheck(cfg.optimized_metric, bool(cfg.get("test"))))
    if cfg.trainer.get("enable_model_summary", True):
        callbacks.append(ModelSummary())  # in place of Lightning's (below), which shows FLOPs
    loggers = build_loggers(cfg.get("logger") or {})
    keep_csv_history(loggers)
    # Checkpoints are written all or nothing and checked before loading (any other
    # plugins the trainer config names are kept).
    plugins = [SafeCheckpointIO(), *(build(p) for p in cfg.trainer.get("plugins") or [])]
    try:
        trainer = build(cfg.trainer, callbacks=callbacks, logger=loggers or False,
                        plugins=plugins, enable_model_summary=False,
                        strategy=choose_strategy(cfg.trainer.get("strategy", "auto"), model))
    except InstantiationException as error:  # Lightning's checks of the trainer's settings
        raise GenmodelsError(f"Lightning's Trainer refused the trainer settings: "
                             f"{error.__cause__ or error}") from None
    # After choose_strategy, which gives manually optimized models DDP's search for unused
    # parameters: every backward pass of a fused model reaches all of them.
    fuse_batches(fused, trainer, model, datamodule)
    save_config(config, output_dir, command)
    hparams = curated_hparams(cfg, output_dir)
    for logger in loggers:
        # Kept by each logger and written to its hparams.yaml when training starts (the
        # TensorBoard logger writes no event for it: default_hp_metric is false).
        logger.log_hyperparams(hparams)

    try:
        trainer.fit(model, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"))
    except TrainingDiverged:
        save_summary(callback_metrics(trainer), cfg, trainer, output_dir, status="diverged")
        raise
    except SystemExit as stop:  # SIGTERM or Ctrl-C, after saving interrupted.ckpt
        raise exit_after_signal(stop, trainer, output_dir) from None
    finally:
        # A run that took a training step keeps its directory, whatever stopped it.
        RunDirectory.trained = trainer.global_step > 0
    metrics = callback_metrics(trainer)
    if cfg.get("test"):
        trainer.test(model, datamodule=datamodule, verbose=False)
        metrics |= callback_metrics(trainer)
    log_final_metrics(loggers, hparams, metrics, trainer.global_step)
    save_summary(metrics, cfg, trainer, output_dir)
    report(metrics, output_dir, loggers)
    return metrics


def optimized_value(cfg: DictConfig, metrics: dict[str, float]) -> float | None:
    """The value a sweeper optimises: `metrics[cfg.optimized_metric]`.

    A diverged run (NaN or infinite metric) returns None: the Optuna sweeper then records
    the trial as failed and goes on (a NaN would stop the hydra-optuna-sweeper 1.3 sweep).
    """
    name = cfg.get("optimized_metric")
    if not name:
        return None
    if name not in metrics:
        raise GenmodelsError(f"optimized_metric={name!r} was not logged; valid choices: "
                             f"{', '.join(sorted(k for k in metrics if '/' in k))}.")
    if not math.isfinite(metrics[name]):
        log.warning("Training diverged: %s=%s; a sweep records this job as failed.",
                    name, metrics[name])
        return None
    return metrics[name]


def callback_metrics(trainer: L.Trainer) -> dict[str, float]:
    """The metrics Lightning holds now (the last logged of each), as plain floats."""
    return {name: float(value) for name, value in trainer.callback_metrics.items()}


@rank_zero_only
def log_final_metrics(loggers, hparams: dict, metrics: dict[str, float], step: int) -> None:
    """The run's row in TensorBoard's HPARAMS view: its hyperparameters and final metrics
    (`hp/val/...`, `hp/test/...`), by which the runs of a sweep can be ranked."""
    final = {f"hp/{k}": v for k, v in metrics.items()
             if k.startswith(("val/", "test/")) and not k.endswith("_step")}
    for logger in loggers:
        if isinstance(logger, TensorBoardLogger):
            log_hparams_session(Path(logger.log_dir) / "hparams", hparams, final, step)


@rank_zero_only
def save_config(config: dict, output_dir: Path, command: DictConfig) -> None:
    """The resolved config, and Hydra's record of the command's unresolved one: written
    once the run has passed its checks, so a refused start changes nothing."""
    RunDirectory.started = True  # from here on, a failure leaves the run as it is
    output_dir.mkdir(parents=True, exist_ok=True)
    save_hydra_record(command, output_dir)
    write_text_atomically(output_dir / "config.yaml", OmegaConf.to_yaml(OmegaConf.create(config)))
    # Said first, not only at the end: where to look while it trains.
    log.info("Run directory: %s (config.yaml, checkpoints/, logs)", output_dir.resolve())


@rank_zero_only
def save_summary(metrics: dict[str, float], cfg: DictConfig, trainer: L.Trainer | None,
                 output_dir: Path, status: str = "ok") -> None:
    """`summary.json`: the status (ok or diverged) and final metrics of the run (val/...,
    test/..., train/... epoch means, also under a phase's name: autoencoder/val/...), and
    where its trainer stopped, read by the sweep summary table."""
    final = {k: (v if math.isfinite(v) else None) for k, v in sorted(metrics.items())
             if {"val", "test", "train"} & set(k.split("/")[:-1]) and not k.endswith("_step")}
    stopped_at = ({"epochs": trainer.current_epoch, "global_step": trainer.global_step}
                  if trainer is not None else {})
    summary = {"status": status, "name": cfg.get("name"), "tags": list(cfg.get("tags") or []),
               **stopped_at, "optimized_metric": cfg.get("optimized_metric"), "metrics": final}
    write_text_atomically(output_dir / "summary.json", json.dumps(summary, indent=2) + "\n")


@rank_zero_only
def report(metrics: dict[str, float], output_dir: Path, loggers) -> None:
    shown = ", ".join(f"{k}={v:.4g}" for k, v in sorted(metrics.items())
                      if k.startswith(("val/", "test/")) and not k.endswith("_step"))
    log.info("Final metrics: %s", shown or "none")
    log.info("Run directory: %s", output_dir.resolve())
    log.info("Checkpoints:   %s", (output_dir / "checkpoints").resolve())
    for logger in loggers:
        log.info("%s logs: %s", type(logger).__name__, Path(logger.log_dir).resolve())
    log.info("View with:     tensorboard --logdir %s", output_dir.parent.resolve())
