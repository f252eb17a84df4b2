"""Learning-rate curves with short names: `lr`, or `lr/<parameter group>`."""

import lightning as L

from genmodels.engine.lightning_private import logging_step


class LearningRates(L.Callback):
    """At the start of every training epoch, logs each optimizer's learning rate (after
    any scheduler's update) as `lr` when the model has one optimizer with one unnamed
    parameter group, otherwise as `lr/<name>`: the parameter group's `name` (a GAN's
    `generator` and `discriminator`), else `<optimizer class>-<index>`.

    (Lightning's LearningRateMonitor names them after the optimizer class and its position,
    such as `lr-RMSprop-1/generator`.)
    """

    def on_train_epoch_start(self, trainer, pl_module):
        rates = learning_rates(trainer.optimizers)
        for logger in trainer.loggers:
            logger.log_metrics(rates, step=logging_step(trainer))


def learning_rates(optimizers) -> dict[str, float]:
    groups = [(index, optimizer, group) for index, optimizer in enumerate(optimizers)
              for group in optimizer.param_groups]
    if len(groups) == 1 and "name" not in groups[0][2]:
        return {"lr": groups[0][2]["lr"]}
    rates = {}
    for index, optimizer, group in groups:
        name = group.get("name") or f"{type(optimizer).__name__}-{index}"
        rates[f"lr/{name}"] = group["lr"]
    return rates
