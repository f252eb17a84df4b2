"""speed.fused_batches: several optimizer steps per Lightning training step."""

from functools import partial

import lightning as L
import torch
from lightning.pytorch.plugins.precision import MixedPrecision, Precision
from lightning.pytorch.strategies import SingleDeviceStrategy
from lightning.pytorch.utilities.model_helpers import is_overridden
from omegaconf import DictConfig

from genmodels.engine.lightning_private import counted_optimizer_step
from genmodels.engine.random_streams import random_streams
from genmodels.errors import GenmodelsError
from genmodels.models.base import GenerativeModel

# What Lightning calls around each optimizer step of manual optimization.
GRADIENT_HOOKS = ("on_before_backward", "on_after_backward", "on_before_optimizer_step")


def fused_batches(speed: DictConfig | None) -> int:
    """speed.fused_batches, checked: a whole number >= 1."""
    count = (speed or {}).get("fused_batches", 1)
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise GenmodelsError(f"speed.fused_batches must be an integer >= 1 (1: off), "
                             f"got {count!r}.")
    return count


def fuse_batches(count: int, trainer: L.Trainer, model: GenerativeModel, datamodule) -> None:
    """`count` = speed.fused_batches = k > 1: each batch Lightning hands to the model's
    training step is k consecutive batches of one pass, and the model takes one optimizer
    step on each, in order (`fused_training_step`): the same steps as one batch per
    Lightning step, with Lightning's per-step work (hooks, closures, progress bar, and
    above all its logging steps) paid once per k batches. Small models, whose own step
    takes a few milliseconds, gain most. This uses Lightning's manual optimization, so
    Lightning's own gradient clipping and accumulation do not apply: they are refused.

    Lightning counts its own steps: trainer.log_every_n_steps, the loggers' step axis and
    the progress bar count fused batches (k optimizer steps each), so losses are logged
    every k * log_every_n_steps optimizer steps. That is part of the saving: the
    logging steps (`self.log` and the loggers) cost more than a small model's step."""
    if count == 1:
        return
    if type(model).training_step is not GenerativeModel.training_step:
        raise GenmodelsError(
            f"speed.fused_batches applies to models trained one loss at a time "
            f"(autoencoders, VAEs); {type(model).__name__} has its own training step: "
            f"use speed.fused_batches=1.")
    for key, off in (("gradient_clip_val", None), ("accumulate_grad_batches", 1)):
        if getattr(trainer, key) not in (off, 0):
            raise GenmodelsError(
                f"speed.fused_batches={count} steps the optimizer inside the model, where "
                f"Lightning's trainer.{key}={getattr(trainer, key)} does not apply: set "
                f"speed.fused_batches=1 or trainer.{key}={off}.")
    model.automatic_optimization = False
    # An attribute of this model only: Lightning calls it in place of the class's method.
    model.training_step = partial(fused_training_step, model, datamodule.batch_size)
    trainer.callbacks.append(EpochSchedulers())
    datamodule.fused_batches = count


def fused_training_step(model: GenerativeModel, batch_size: int, batch, batch_idx):
    """What Lightning's automatic optimization does for one batch (zero_grad, backward,
    step; a step-interval LR scheduler), once per batch of `batch_size` in the fused
    `batch`, stopping at trainer.max_steps exactly. Returns the losses to log, each a
    vector of one value per optimizer step."""
    trainer = model.trainer
    optimizer, max_steps = model.optimizers(), trainer.max_steps
    plain = plain_steps_do_the_same(trainer, model)
    streams = random_streams(trainer)
    step_logs = []
    for part in zip(*(part.split(batch_size) for part in batch), strict=True):
        if 0 <= max_steps <= model.global_step:
            break
        losses = model.losses(part)
        step_logs.append({name: value.detach() for name, value in losses.items()})
        optimizer.zero_grad()
        if plain:
            losses["loss"].backward()
            with counted_optimizer_step(optimizer):
                optimizer.optimizer.step()
        else:
            model.manual_backward(losses["loss"])
            optimizer.step()
        step_schedulers(trainer, "step")
        if streams is not None:  # each optimizer step draws as it would unfused
            streams.reseed(trainer, model)
    if not step_logs:
        return None
    return {"log": {name: torch.stack([logs[name] for logs in step_logs])
                    for name in step_logs[0]}}


def plain_steps_do_the_same(trainer: L.Trainer, model: L.LightningModule) -> bool:
    """Whether plain `loss.backward()` and `optimizer.step()` do all that Lightning's
    `manual_backward` and `LightningOptimizer.step` would. Those call the three
    gradient hooks on every callback and on the module (and the module's `backward`):
    ~0.2 ms per optimizer step with the default callbacks, a few percent of a small
    model's step, spent on nothing when no one implements them. Beyond that they only
    work under other strategies (DDP's backward prepares its gradient all-reduce) and
    precisions (16-mixed scales the loss, bf16-true casts)."""
    precision = trainer.precision_plugin
    return (not any(is_overridden(hook, listener) for listener in [*trainer.callbacks, model]
                    for hook in GRADIENT_HOOKS)
            and not is_overridden("backward", model)
            and type(trainer.strategy) is SingleDeviceStrategy
            and type(precision) in (Precision, MixedPrecision)
            and getattr(precision, "scaler", None) is None)


def step_schedulers(trainer: L.Trainer, interval: str) -> None:
    """Under manual optimization Lightning leaves the LR schedulers to the model: step
    those of `interval` ("step" or "epoch"), as it would."""
    for config in trainer.lr_scheduler_configs:
        if config.interval == interval:
            config.scheduler.step()


class EpochSchedulers(L.Callback):
    """Steps the epoch-interval LR schedulers of a fused-batch model at each epoch's end,
    as Lightning's automatic optimization would."""

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        step_schedulers(trainer, "epoch")
