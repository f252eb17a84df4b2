"""The training job behind `train.py`: build everything from the config, then fit."""

import logging
from pathlib import Path

import lightning as L
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf

from genmodels.callbacks import ConfigInCheckpoint
from genmodels.config import build
from genmodels.errors import GenmodelsError

log = logging.getLogger(__name__)


def choose_strategy(strategy, model: L.LightningModule):
    """Plain DDP for models with one optimizer; with manual optimization (GANs), each
    backward pass reaches one network only, which DDP must be told to expect."""
    if strategy == "ddp" and not model.automatic_optimization:
        return "ddp_find_unused_parameters_true"
    return strategy


def train(cfg: DictConfig) -> dict[str, float]:
    """Train `cfg.model` on `cfg.dataset`; return the final metrics (val/..., test/...)."""
    output_dir = Path(cfg.paths.output_dir)
    checkpoint_dir = output_dir / "checkpoints"
    if cfg.get("ckpt_path") is None and any(checkpoint_dir.glob("*.ckpt")):
        raise GenmodelsError(
            f"{checkpoint_dir} already holds checkpoints; refusing to overwrite them. "
            "Start a new run directory, or continue this run with ckpt_path=<checkpoint>."
        )
    L.seed_everything(cfg.seed, workers=True, verbose=False)

    datamodule = build(cfg.dataset)
    model = build(cfg.model)
    config = OmegaConf.to_container(cfg, resolve=True)
    callbacks = [build(c) for c in (cfg.get("callbacks") or {}).values() if c is not None]
    callbacks.append(ConfigInCheckpoint(config))
    loggers = [build(c) for c in (cfg.get("logger") or {}).values() if c is not None]
    trainer = build(cfg.trainer, callbacks=callbacks, logger=loggers or False,
                    strategy=choose_strategy(cfg.trainer.get("strategy", "auto"), model))
    save_config(config, output_dir)

    trainer.fit(model, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"))
    metrics = {name: float(value) for name, value in trainer.callback_metrics.items()}
    if cfg.get("test"):
        trainer.test(model, datamodule=datamodule, verbose=False)
        metrics |= {name: float(value) for name, value in trainer.callback_metrics.items()}
    final = {f"hp/{k}": v for k, v in metrics.items() if k.startswith(("val/", "test/"))}
    for logger in loggers:
        if isinstance(logger, TensorBoardLogger):
            # With final metrics, TensorBoard's HPARAMS view can rank the runs of a sweep.
            logger.log_hyperparams(config, metrics=final)
        else:
            logger.log_hyperparams(config)
    report(metrics, output_dir, loggers)
    return metrics


@rank_zero_only
def save_config(config: dict, output_dir: Path) -> None:
    """The resolved config, next to Hydra's own record of the unresolved one."""
    output_dir.mkdir(parents=True, exist_ok=True)
    OmegaConf.save(OmegaConf.create(config), output_dir / "config.yaml")


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
