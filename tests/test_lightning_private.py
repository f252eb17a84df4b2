"""Each Lightning private genmodels uses (genmodels/engine/lightning_private.py) still does
what the engine relies on, in the installed Lightning. A failure names the version."""

import importlib.util
import logging

import lightning as L
import pytest
import torch
from lightning.pytorch.strategies import DDPStrategy

from genmodels.engine import lightning_private as private
from genmodels.engine.model_summary import ModelSummary


def moved(what: str) -> str:
    return (f"Lightning {L.__version__} no longer supports {what}, which "
            f"genmodels/engine/lightning_private.py uses (written for Lightning "
            f"{private.TESTED_LIGHTNING}): update that module.")


class Tiny(L.LightningModule):
    """One linear layer on random data; `manual`: steps its optimizer through
    `counted_optimizer_step`, as fused batches do."""

    def __init__(self, manual: bool = False):
        super().__init__()
        self.layer = torch.nn.Linear(4, 1)
        self.automatic_optimization = not manual

    def training_step(self, batch, batch_idx):
        loss = self.layer(batch[0]).square().mean()
        if self.automatic_optimization:
            return loss
        optimizer = self.optimizers()
        optimizer.zero_grad()
        loss.backward()
        with private.counted_optimizer_step(optimizer):
            optimizer.optimizer.step()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)

    def train_dataloader(self):
        data = torch.utils.data.TensorDataset(torch.randn(64, 4))
        return torch.utils.data.DataLoader(data, batch_size=4)


class Probe(L.Callback):
    def __init__(self, max_steps: int | None = None):
        self.max_steps, self.seen = max_steps, []

    def on_fit_start(self, trainer, pl_module):
        if self.max_steps is not None:
            private.set_max_steps(trainer, self.max_steps)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.seen.append((batch_idx, private.is_logging_step(trainer),
                          private.logging_step(trainer)))


def fit(module, probe, **options) -> L.Trainer:
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False,
                        callbacks=[probe, *options.pop("callbacks", [])], **options)
    trainer.fit(module)
    return trainer


def test_the_installed_lightning_is_the_tested_one():
    installed = ".".join(L.__version__.split(".")[:2])
    assert installed == private.TESTED_LIGHTNING, moved("the tested release")


def test_logging_steps_are_every_log_every_n_steps_batches_at_the_loggers_step():
    probe = Probe()
    fit(Tiny(), probe, max_epochs=1, limit_train_batches=6, log_every_n_steps=3)
    expected = [(i, (i + 1) % 3 == 0, i) for i in range(6)]
    assert probe.seen == expected, moved("trainer._logger_connector.should_update_logs "
                                         "or fit_loop.epoch_loop._batches_that_stepped")


def test_counted_optimizer_steps_advance_global_step_and_stop_at_max_steps():
    module = Tiny(manual=True)
    before = [p.detach().clone() for p in module.parameters()]
    trainer = fit(module, Probe(), max_steps=5)
    assert trainer.global_step == 5, moved("LightningOptimizer._on_before_step/_on_after_step")
    assert any(not torch.equal(a, b) for a, b in zip(before, module.parameters(), strict=True))


def test_set_max_steps_changes_the_fit_under_way():
    trainer = fit(Tiny(), Probe(max_steps=3), max_steps=10)
    assert trainer.global_step == 3, moved("fit_loop.epoch_loop.max_steps")


def test_find_unused_parameters_reaches_distributed_data_parallel():
    strategy = DDPStrategy()
    private.find_unused_parameters(strategy)
    assert strategy._ddp_kwargs == {"find_unused_parameters": True}, \
        moved("DDPStrategy._ddp_kwargs")


def test_the_model_summary_table_is_lightnings_without_flops(caplog):
    with caplog.at_level(logging.INFO, logger="genmodels.engine.model_summary"):
        fit(Tiny(), Probe(), max_steps=1, callbacks=[ModelSummary()])
    table = caplog.text
    assert "layer" in table and "Linear" in table and "Trainable params" in table, \
        moved("utilities.model_summary.model_summary._format_summary_table")
    assert "FLOPs" not in table


def test_the_quieted_warning_comes_from_a_module_that_exists():
    if importlib.util.find_spec("lightning.pytorch.utilities._pytree") is None:
        pytest.fail(moved("lightning.pytorch.utilities._pytree (its warning is filtered)"))
