"""Real (tiny) trainings through the whole framework: config -> data -> model -> logs."""

import csv
import json
import math
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from PIL import Image

from genmodels.config import build
from genmodels.engine import essential_callbacks
from genmodels.engine.fused_batches import fuse_batches
from genmodels.engine.runs import load_model
from genmodels.errors import GenmodelsError
from genmodels.jobs.train import train

from .conftest import FAST, SMALL_DCGAN, run_train

MODELS = ["ae", "vae", "dcgan"]
MAIN_LOSS = {"ae": "train/loss_step", "vae": "train/loss_step", "dcgan": "train/d_loss_step"}


def read_metrics(output_dir: Path) -> list[dict[str, str]]:
    with open(output_dir / "csv" / "metrics.csv") as file:
        return list(csv.DictReader(file))


def step_values(rows, key: str) -> list[float]:
    return [float(row[key]) for row in rows if row.get(key)]


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory) -> Path:
    """80 small RGB images of two kinds (bright discs, dark squares) in class subfolders."""
    root = tmp_path_factory.mktemp("folder")
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:20, :20]
    for i in range(40):
        cx, cy, r = rng.integers(6, 14, 3)
        disc = ((xx - cx) ** 2 + (yy - cy) ** 2 < (r // 2 + 2) ** 2) * 230
        square = ((abs(xx - cx) < 4) & (abs(yy - cy) < 4)) * 120
        for name, array in (("discs", disc), ("squares", square)):
            (root / name).mkdir(exist_ok=True)
            rgb = np.stack([array, array * 0.5, array * 0.2], axis=-1).astype(np.uint8)
            Image.fromarray(rgb).save(root / name / f"{i}.png")
    return root


def dataset_args(name: str, folder: Path) -> list[str]:
    if name == "digits":
        return ["dataset=digits"]
    return ["dataset=folder", f"dataset.data_dir={folder}", "dataset.image_size=16",
            "dataset.batch_size=16"]


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("dataset", ["digits", "folder"])
def test_every_model_learns_on_every_offline_dataset(model, dataset, image_folder, make_config):
    cfg = make_config(f"model={model}", *dataset_args(dataset, image_folder), *FAST,
                      "logger=csv", "trainer.max_epochs=3", "trainer.log_every_n_steps=1",
                      "trainer.limit_train_batches=12", "callbacks.image_grids.save_dir=null")
    metrics = train(cfg)
    assert metrics and all(math.isfinite(v) for v in metrics.values()), metrics
    losses = step_values(read_metrics(Path(cfg.paths.output_dir)), MAIN_LOSS[model])
    assert len(losses) >= 12
    if model == "dcgan":
        # D's loss does not fall steadily: G catches up. D has learned while it stays below
        # chance, ln 2 (D's loss at equal outputs on real and fake is at least about that).
        assert np.median(losses[len(losses) // 3:]) < math.log(2) - 0.05, losses
    else:
        assert np.mean(losses[-4:]) < np.mean(losses[:4]), losses
    model_back = load_model(cfg.paths.output_dir)
    samples = model_back.sample(4)
    channels, size = cfg.dataset.channels, cfg.dataset.image_size
    assert samples.shape == (4, channels, size, size)
    low, high = model_back.value_range
    assert samples.min() >= low and samples.max() <= high


def test_tensorboard_gets_scalars_hparams_and_image_grids(make_config):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cfg = make_config("model=vae", *FAST, "trainer.max_epochs=2", "trainer.limit_train_batches=5")
    train(cfg)
    events = EventAccumulator(str(Path(cfg.paths.output_dir) / "tensorboard"),
                              size_guidance={"images": 0})
    events.Reload()
    tags = events.Tags()
    for scalar in ("train/loss_step", "train/recon_epoch", "train/kl_epoch", "train/elbo_epoch",
                   "val/loss", "val/recon", "val/kl", "val/elbo", "lr"):
        assert scalar in tags["scalars"], (scalar, tags["scalars"])
    assert {"samples", "reconstructions"} <= set(tags["images"])
    assert len(events.Images("samples")) == 2  # one grid per validation epoch
    assert (Path(cfg.paths.output_dir) / "images" / "samples_epoch0001.png").exists()
    # HPARAMS: tests/test_tensorboard.py


def test_gan_logs_both_players_and_discriminator_accuracy(make_config):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cfg = make_config("model=dcgan", *FAST, "trainer.max_epochs=1", "trainer.limit_train_batches=3",
                      "trainer.log_every_n_steps=1")
    train(cfg)
    events = EventAccumulator(str(Path(cfg.paths.output_dir) / "tensorboard"))
    events.Reload()
    scalars = set(events.Tags()["scalars"])
    assert {"train/d_loss_step", "train/g_loss_step", "train/d_real_acc_step",
            "train/d_fake_acc_step", "lr/discriminator", "lr/generator"} <= scalars, scalars
    assert "samples" in events.Tags()["images"]


def test_gan_trains_under_bf16_mixed_precision(make_config):
    # Small widths and a few validation batches: CPUs without native bf16 emulate it slowly.
    cfg = make_config("model=dcgan", *FAST, "trainer.precision=bf16-mixed",
                      *SMALL_DCGAN,
                      "trainer.max_epochs=1", "trainer.limit_train_batches=4",
                      "trainer.limit_val_batches=2", "trainer.limit_test_batches=2")
    metrics = train(cfg)
    assert math.isfinite(metrics["train/d_loss_epoch"]) and math.isfinite(metrics["val/g_loss"])


def test_checkpoints_keep_the_last_and_periodic_ones(make_config):
    cfg = make_config("model=ae", *FAST, "trainer.max_epochs=4", "trainer.limit_train_batches=2",
                      "callbacks.periodic_checkpoint.every_n_epochs=2")
    train(cfg)
    names = sorted(p.name for p in (Path(cfg.paths.output_dir) / "checkpoints").iterdir())
    assert names == ["epoch_001.ckpt", "epoch_003.ckpt", "last.ckpt"]
    assert (Path(cfg.paths.output_dir) / "config.yaml").exists()


def test_last_checkpoint_is_written_after_every_epoch(make_config):
    cfg = make_config("model=ae")
    last = Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt"
    epochs_in_last = []

    class WatchLast(L.Callback):  # checkpoints are written at each epoch's very end
        def on_train_epoch_start(self, trainer, pl_module):
            if last.exists():
                epochs_in_last.append(torch.load(last, weights_only=False)["epoch"])

    trainer = L.Trainer(max_epochs=3, limit_train_batches=2, logger=False,
                        callbacks=[*essential_callbacks(), build(cfg.callbacks.last_checkpoint),
                                   WatchLast()],
                        enable_progress_bar=False, enable_model_summary=False,
                        accelerator="cpu")
    trainer.fit(build(cfg.model), build(cfg.dataset))
    assert epochs_in_last == [0, 1]
    assert torch.load(last, weights_only=False)["epoch"] == 2


def test_a_second_run_never_overwrites_checkpoints(make_config):
    args = ("model=ae", *FAST, "trainer.max_epochs=1", "trainer.limit_train_batches=2")
    cfg = make_config(*args)
    train(cfg)
    before = (Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt").read_bytes()
    with pytest.raises(GenmodelsError, match="refusing to overwrite"):
        train(make_config(*args))
    assert (Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt").read_bytes() == before


def test_reloaded_model_matches_the_trained_one(make_config):
    cfg = make_config("model=vae", *FAST, "trainer.max_epochs=1", "trainer.limit_train_batches=3")
    train(cfg)
    model = load_model(Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt")
    state = torch.load(Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt",
                       weights_only=False)["state_dict"]
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    assert not model.training


def test_train_py_runs_end_to_end_and_says_where_outputs_went(tmp_path):
    result = run_train("model=ae", "trainer.max_epochs=1", "trainer.limit_train_batches=3",
                       "trainer.enable_progress_bar=false", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    output = result.stdout + result.stderr
    assert "Run directory:" in output and "tensorboard --logdir" in output
    (run_dir,) = (tmp_path / "logs" / "runs").iterdir()
    assert (run_dir / "checkpoints" / "last.ckpt").exists()
    assert (run_dir / ".hydra" / "config.yaml").exists() and (run_dir / "config.yaml").exists()
    # A quiet console: no library noise (tests/test_console.py), and the summary comes last.
    for noise in ("LeafSpec", "litlogger", "litmodels", "Tip:", "FLOPs", "Total Flops"):
        assert noise not in output, (noise, output[-3000:])
    assert "Trainable params" in output  # the model summary itself stays
    assert output.count("GPU available") == 1  # Lightning's lines once, not twice
    lines = [line for line in result.stdout.splitlines() if line.strip()]
    assert "View with:" in lines[-1] and "Final metrics:" in lines[-5], lines[-6:]


def test_multirun_trains_each_job_in_its_own_directory(tmp_path):
    # The second batch size is refused: the sweep goes on and its table says why.
    result = run_train("-m", "model=ae,vae", "dataset.batch_size=32,-5", "trainer.max_epochs=1",
                       "trainer.limit_train_batches=2", "trainer.enable_progress_bar=false",
                       "test=false", cwd=tmp_path)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("Error: 2 of 4 jobs failed")
    (sweep,) = (tmp_path / "logs" / "multiruns").iterdir()
    jobs = sorted(p.name for p in sweep.iterdir() if p.is_dir())
    assert jobs == ["0_ae_digits", "1_ae_digits", "2_vae_digits", "3_vae_digits"]
    for job in ("0_ae_digits", "2_vae_digits"):
        assert (sweep / job / "checkpoints" / "last.ckpt").exists()
    with open(sweep / "sweep_summary.csv") as file:
        table = list(csv.DictReader(file))
    assert [(r["model"], r["dataset.batch_size"], r["status"]) for r in table] == [
        ("ae", "32", "ok"), ("ae", "-5", "failed"), ("vae", "32", "ok"), ("vae", "-5", "failed")]
    assert table[1]["error"] == "dataset.batch_size must be positive, got -5."
    assert table[0]["val/loss [BCE/pixel]"] and table[2]["val/loss [VAE objective]"]
    assert (sweep / "sweep_summary.md").read_text().count("| failed |") == 2


def test_gan_trains_with_ddp_on_two_cpu_processes(tmp_path):
    result = run_train("model=dcgan", "trainer=ddp_cpu", "trainer.max_epochs=1",
                       "trainer.limit_train_batches=3", "trainer.limit_val_batches=2",
                       "trainer.enable_progress_bar=false", "test=false",
                       # sample quality: measured by rank zero, shared with rank one
                       "callbacks=quality", "callbacks.sample_quality.every_n_epochs=1",
                       "callbacks.sample_quality.num_samples=50",
                       "callbacks.sample_quality.classifier_epochs=1",
                       f"callbacks.sample_quality.cache_dir={tmp_path / 'classifiers'}",
                       cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    (run_dir,) = (tmp_path / "logs" / "runs").iterdir()  # both ranks share one run dir
    assert (run_dir / "checkpoints" / "last.ckpt").exists()
    assert (run_dir / "images" / "samples_epoch0000.png").exists()
    assert (result.stdout + result.stderr).count("Training the feature classifier") == 1
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["metrics"]["val/fd_classifier"] > 0


def test_missing_dataset_stops_with_a_clear_message(tmp_path):
    result = run_train("dataset=mnist", f"dataset.data_dir={tmp_path / 'empty'}",
                       "dataset.download=false", cwd=tmp_path)
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    assert f"Error: The mnist dataset is not in {tmp_path / 'empty'}" in result.stderr
    assert "MNIST/raw/" in result.stderr


@pytest.mark.parametrize("spelling", ["ddp", "ddp_spawn", "ddp_find_unused_parameters_false",
                                      "ddp_fork", "object", "object_false", "target"])
def test_gans_get_ddp_with_unused_parameters_however_ddp_is_spelled(spelling, make_config):
    from lightning.pytorch.strategies import DDPStrategy
    from omegaconf import OmegaConf

    from genmodels.jobs.train import choose_strategy

    strategy = {"object": DDPStrategy(), "object_false": DDPStrategy(find_unused_parameters=False),
                "target": OmegaConf.create({"_target_": "lightning.pytorch.strategies.DDPStrategy",
                                            "start_method": "spawn"})}.get(spelling, spelling)
    gan = build(make_config("model=gan").model)
    trainer = L.Trainer(accelerator="cpu", devices=2, logger=False,
                        strategy=choose_strategy(strategy, gan))
    assert isinstance(trainer.strategy, DDPStrategy)
    assert trainer.strategy._ddp_kwargs["find_unused_parameters"] is True
    # Everything else about the DDP asked for is kept.
    start = {"ddp_spawn": "spawn", "ddp_fork": "fork", "target": "spawn"}.get(spelling, "popen")
    assert trainer.strategy._start_method == start
    # Models with one optimizer keep the strategy exactly as configured.
    vae = build(make_config("model=vae").model)
    assert choose_strategy(strategy, vae) is strategy


STEP_LR = ["+model.scheduler._target_=torch.optim.lr_scheduler.StepLR",
           "+model.scheduler._partial_=true", "+model.scheduler.step_size=1",
           "+model.scheduler.gamma=0.7"]


@pytest.mark.parametrize("model, extra", [("vae", STEP_LR), ("denoising_ae", [])])
def test_fused_batches_train_exactly_as_one_batch_per_step(model, extra, make_config):
    # 22 batches of 64 per epoch: fused by 4, each epoch ends on a fused batch of 2, and
    # max_steps=27 stops inside a fused batch. Validation and the sanity pass draw from
    # the same random stream between epochs; the LR halves (0.7) each epoch.
    def run(fused: int):
        cfg = make_config(f"model={model}", *FAST, "trainer.max_steps=27", "test=false",
                          "dataset.batch_size=64", "logger=csv", "trainer.limit_val_batches=2",
                          "trainer.log_every_n_steps=4", f"speed.fused_batches={fused}",
                          *extra, run_name=f"fused{fused}")
        metrics, output_dir = train(cfg), Path(cfg.paths.output_dir)
        summary = json.loads((output_dir / "summary.json").read_text())
        assert summary["global_step"] == 27
        weights = load_model(output_dir / "checkpoints" / "last.ckpt").state_dict()
        return weights, metrics, step_values(read_metrics(output_dir), "train/loss_step")

    (one, one_metrics, _), (fused, fused_metrics, fused_logged) = run(1), run(4)
    for (name, a), b in zip(one.items(), fused.values(), strict=True):
        assert torch.equal(a, b), name
    for name in ("train/loss_epoch", "val/loss"):  # the mean of the same 22 steps
        assert fused_metrics[name] == one_metrics[name]
    # trainer.log_every_n_steps=4 counts fused batches: 6 in the first epoch (the last of
    # 2 batches), 2 in the second (of 4 batches, then 1), so 2 logging steps of 8.
    assert len(fused_logged) == 2


class GradientNorms(L.Callback):
    """The gradient norm Lightning shows a callback before each optimizer step."""

    def __init__(self):
        self.norms = []

    def on_before_optimizer_step(self, trainer, module, optimizer):
        grads = [p.grad.flatten() for p in module.parameters() if p.grad is not None]
        self.norms.append(torch.cat(grads).norm().item())


@pytest.mark.parametrize("precision", ["32-true", "bf16-mixed"])
def test_fused_batches_call_the_gradient_hooks_only_when_implemented(precision, make_config,
                                                                     monkeypatch):
    # Calling Lightning's gradient hooks on every callback costs ~0.2 ms per optimizer
    # step: fused batches skip that when no callback implements one, and train as before;
    # a callback that does sees every optimizer step, as without fused batches.
    from lightning.pytorch.trainer import call

    dispatched, dispatch = [], call._call_callback_hooks

    def recording_dispatch(trainer, hook, *args, **kwargs):
        dispatched.append(hook)
        return dispatch(trainer, hook, *args, **kwargs)

    monkeypatch.setattr(call, "_call_callback_hooks", recording_dispatch)

    def fit(fused: int, callbacks: list) -> tuple[L.Trainer, dict]:
        cfg = make_config("model=vae", "dataset.batch_size=16", run_name=f"fused{fused}")
        L.seed_everything(0)
        model, datamodule = build(cfg.model), build(cfg.dataset)
        trainer = L.Trainer(max_steps=8, limit_val_batches=0, logger=False,
                            enable_progress_bar=False, enable_model_summary=False,
                            enable_checkpointing=False, accelerator="cpu",
                            precision=precision, callbacks=[*essential_callbacks(), *callbacks])
        fuse_batches(fused, trainer, model, datamodule)
        trainer.fit(model, datamodule)
        return trainer, model.state_dict()

    trainer, plain = fit(4, [])
    steps = trainer.fit_loop.epoch_loop.manual_optimization.optim_step_progress.total
    assert "on_train_batch_end" in dispatched and "on_before_backward" not in dispatched
    assert steps.ready == steps.completed == 8  # Lightning's count of optimizer steps
    one, fused = GradientNorms(), GradientNorms()
    _, unfused = fit(1, [one])
    fit(4, [fused])
    assert len(fused.norms) == 8 and fused.norms == one.norms
    for (name, a), b in zip(unfused.items(), plain.values(), strict=True):
        assert torch.equal(a, b), name


@pytest.mark.slow
def test_fused_batches_under_ddp_sync_every_optimizer_step(tmp_path):
    # Each process sees its own half of every batch: a fused step whose later optimizer
    # steps skipped DDP's gradient all-reduce would end with other weights.
    def run(fused: int) -> dict:
        run_dir = tmp_path / f"fused{fused}"
        result = run_train("model=vae", "trainer=ddp_cpu", "trainer.max_steps=14",
                           "trainer.enable_progress_bar=false", "test=false", "logger=csv",
                           "dataset.batch_size=32", f"speed.fused_batches={fused}",
                           f"hydra.run.dir={run_dir}", cwd=tmp_path)
        assert result.returncode == 0, result.stderr[-3000:]
        return torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=False)

    one, fused = run(1), run(3)
    assert one["global_step"] == fused["global_step"] == 14
    for (name, a), b in zip(one["state_dict"].items(), fused["state_dict"].values(), strict=True):
        assert torch.equal(a, b), name
