"""Real (tiny) trainings through the whole framework: config -> data -> model -> logs."""

import csv
import math
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from omegaconf import open_dict
from PIL import Image

from genmodels.config import build
from genmodels.engine import essential_callbacks
from genmodels.engine.runs import load_model
from genmodels.errors import GenmodelsError
from genmodels.jobs.train import train

from .conftest import FAST, SMALL_DCGAN, SMALL_DDPM, run_train

MODELS = ["ae", "vae", "dcgan", "ddpm"]
MAIN_LOSS = {"ae": "train/loss_step", "vae": "train/loss_step", "dcgan": "train/d_loss_step",
             "ddpm": "train/loss_step"}
# The same code paths at a fraction of the cost: a narrow U-Net, grids in 4 DDIM steps.
SMALL = {"ddpm": SMALL_DDPM}


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
    cfg = make_config(f"model={model}", *SMALL.get(model, []),
                      *dataset_args(dataset, image_folder), *FAST,
                      "logger=csv", "trainer.max_epochs=3", "trainer.log_every_n_steps=1",
                      "trainer.limit_train_batches=12", "callbacks.image_grids.save_dir=null")
    metrics = train(cfg)
    assert metrics and all(math.isfinite(v) for v in metrics.values()), metrics
    losses = step_values(read_metrics(Path(cfg.paths.output_dir)), MAIN_LOSS[model])
    assert len(losses) >= 12
    if model == "dcgan":
        # D's loss does not fall steadily: G catches up. D has learned while it stays below
        # chance: model=dcgan's hinge loss, relu(1 - D(x)) + relu(1 + D(G(z))), is 2 when D
        # scores reals and fakes alike at 0 (and at least 2 for any equal score).
        assert cfg.model.loss == "hinge"
        assert np.median(losses[len(losses) // 3:]) < 2 - 0.1, losses
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

    # The non-saturating loss with smoothing, so that each value has a closed form below.
    cfg = make_config("model=dcgan", *FAST, *SMALL_DCGAN, "trainer.max_epochs=1",
                      "trainer.limit_train_batches=6", "trainer.log_every_n_steps=3",
                      "model.loss=non_saturating", "model.label_smoothing=0.1")
    with open_dict(cfg):
        cfg.callbacks.step_logs = {"_target_": f"{__name__}.StepLogs"}
    train(cfg)
    events = EventAccumulator(str(Path(cfg.paths.output_dir) / "tensorboard"))
    events.Reload()
    scalars = set(events.Tags()["scalars"])
    assert {"train/d_loss_step", "train/g_loss_step", "train/d_real_acc_step",
            "train/d_fake_acc_step", "train/d_grad_norm_step", "train/g_grad_norm_epoch",
            "lr/discriminator", "lr/generator"} <= scalars, scalars
    assert "samples" in events.Tags()["images"]
    # The figures only watched cost device work: computed on the logging steps (3 and 6) only.
    watched = {"d_real", "d_fake", "d_real_acc", "d_fake_acc", "d_grad_norm", "g_grad_norm"}
    names = [set(logs) for logs in StepLogs.logs]
    assert [watched <= step for step in names] == [False, False, True] * 2
    assert all({"d_loss", "g_loss"} <= step for step in names)
    # The values are those of D's outputs in the step: model=dcgan's D scores the reals
    # and fakes in one call (joint_d_batch), then G's fakes in a second one.
    for logs, (both, g_fakes) in zip(StepLogs.logs, StepLogs.d_outputs, strict=True):
        real, fake = both.chunk(2)
        # Non-saturating loss, reals' labels smoothed to 0.9: BCE with target t is
        # t softplus(-x) + (1 - t) softplus(x).
        d_loss = ((0.9 * F.softplus(-real) + 0.1 * F.softplus(real)).mean()
                  + F.softplus(fake).mean()) / 2
        assert logs["d_loss"] == pytest.approx(d_loss.item(), rel=1e-5)
        assert logs["g_loss"] == pytest.approx(F.softplus(-g_fakes).mean().item(), rel=1e-5)
        if "d_real_acc" in logs:
            assert logs["d_real_acc"] == pytest.approx((real > 0).float().mean().item())
            assert logs["d_fake_acc"] == pytest.approx((fake < 0).float().mean().item())
            assert logs["d_real"] == pytest.approx(real.mean().item(), rel=1e-5)
            assert logs["d_fake"] == pytest.approx(fake.mean().item(), rel=1e-5)
    # TensorBoard has the values of the logging steps.
    for name in ("d_real_acc", "d_fake_acc", "d_real"):
        logged = [event.value for event in events.Scalars(f"train/{name}_step")]
        stepped = [logs[name] for logs in StepLogs.logs if name in logs]
        assert logged == pytest.approx(stepped, rel=1e-5), name
    accuracies = [logs[name] for logs in StepLogs.logs for name in ("d_real_acc", "d_fake_acc")
                  if name in logs]
    assert len(accuracies) == 4 and all(0 <= a <= 1 for a in accuracies)


class InTrainingSteps(L.Callback):
    """Knows whether a training step is running (not validation, not a callback's sampling)."""

    in_step = False

    def on_train_batch_start(self, *args):
        self.in_step = True

    def on_train_batch_end(self, *args):
        self.in_step = False


class StepLogs(InTrainingSteps):
    """Each training step's logs (as floats) and the outputs of every call of D in it."""

    logs: list[dict[str, float]] = []
    d_outputs: list[list[torch.Tensor]] = []

    def on_train_start(self, trainer, pl_module):
        StepLogs.logs, StepLogs.d_outputs = [], []
        pl_module.discriminator.register_forward_hook(self.record)

    def record(self, module, args, out):
        if self.in_step:
            StepLogs.d_outputs[-1].append(out.detach().float())

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        super().on_train_batch_start()
        StepLogs.d_outputs.append([])

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        super().on_train_batch_end()
        StepLogs.logs.append({name: value.item() for name, value in outputs["log"].items()})


class RecordPrecision(InTrainingSteps):
    """The dtypes of G's and D's outputs in training steps, and their weights before and
    after training."""

    dtypes: set[tuple[str, torch.dtype]] = set()
    weights: tuple[dict, dict] = ({}, {})

    def on_train_start(self, trainer, gan):
        RecordPrecision.dtypes = set()
        RecordPrecision.weights = ({n: p.detach().clone() for n, p in gan.named_parameters()},
                                   {})
        for network in (gan.generator, gan.discriminator):
            network.register_forward_hook(self.record)

    def record(self, network, args, out):
        if self.in_step:
            RecordPrecision.dtypes.add((type(network).__name__, out.dtype))

    def on_train_end(self, trainer, gan):
        RecordPrecision.weights[1].update(
            {n: p.detach().clone() for n, p in gan.named_parameters()})


def test_gan_trains_under_bf16_mixed_precision(make_config):
    # Small widths and a few validation batches: CPUs without native bf16 emulate it slowly.
    cfg = make_config("model=dcgan", *FAST, "trainer.precision=bf16-mixed",
                      *SMALL_DCGAN,
                      "trainer.max_epochs=1", "trainer.limit_train_batches=4",
                      "trainer.limit_val_batches=2", "trainer.limit_test_batches=2")
    with open_dict(cfg):
        cfg.callbacks.record_precision = {"_target_": f"{__name__}.RecordPrecision"}
    metrics = train(cfg)
    assert math.isfinite(metrics["train/d_loss_epoch"]) and math.isfinite(metrics["val/g_loss"])
    # Both networks computed in bfloat16 (autocast), never in float32 ...
    assert RecordPrecision.dtypes == {("DCGANGenerator", torch.bfloat16),
                                      ("DCGANDiscriminator", torch.bfloat16)}
    # ... on float32 weights, which trained.
    before, after = RecordPrecision.weights
    assert before.keys() == after.keys() and after
    assert all(w.dtype == torch.float32 for w in after.values())
    for prefix in ("generator.", "discriminator."):
        assert any(not torch.equal(before[n], after[n]) for n in after if n.startswith(prefix))


def test_checkpoints_keep_the_last_and_periodic_ones(make_config):
    cfg = make_config("model=ae", *FAST, "trainer.max_epochs=4", "trainer.limit_train_batches=2",
                      "callbacks.periodic_checkpoint.every_n_epochs=2")
    train(cfg)
    names = sorted(p.name for p in (Path(cfg.paths.output_dir) / "checkpoints").glob("*.ckpt"))
    assert names == ["epoch_001.ckpt", "epoch_003.ckpt", "last.ckpt"]
    assert (Path(cfg.paths.output_dir) / "config.yaml").exists()


def test_a_checkpoint_kept_every_epoch_stands_beside_the_last_one(make_config):
    # Lightning refuses two ModelCheckpoint callbacks that save alike ("Found more than one
    # stateful callback of type ModelCheckpoint"); the periodic one is keyed by its name.
    args = ["model=ae", *FAST, "trainer.limit_train_batches=2", "trainer.limit_val_batches=1",
            "test=false", "callbacks.periodic_checkpoint.every_n_epochs=1"]
    cfg = make_config(*args, "trainer.max_epochs=2")
    train(cfg)
    folder = Path(cfg.paths.output_dir) / "checkpoints"
    assert sorted(p.name for p in folder.glob("*.ckpt")) == ["epoch_000.ckpt", "epoch_001.ckpt",
                                                             "last.ckpt"]
    train(make_config(*args, f"resume={cfg.paths.output_dir}", "trainer.max_epochs=3"))
    assert (folder / "epoch_002.ckpt").exists()


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


def test_missing_dataset_stops_with_a_clear_message_before_lightning_loads(tmp_path,
                                                                           monkeypatch):
    monkeypatch.setenv("PYTHONPROFILEIMPORTTIME", "1")  # each import, on stderr
    result = run_train("dataset=mnist", f"dataset.data_dir={tmp_path / 'empty'}",
                       "dataset.download=false", cwd=tmp_path)
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    assert f"Error: The mnist dataset is not in {tmp_path / 'empty'}" in result.stderr
    assert "MNIST/raw/" in result.stderr
    imported = {line.rsplit("|", 1)[-1].strip() for line in result.stderr.splitlines()
                if line.startswith("import time:")}
    assert "torchvision" in imported and "lightning" not in imported
    assert not list((tmp_path / "logs").glob("runs/*"))  # a refused start leaves no run


