"""generate.py and evaluate.py on a tiny trained run, and the training-time metrics."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import open_dict
from torch import nn

from genmodels import latent
from genmodels.config import build
from genmodels.data import DigitsDataModule
from genmodels.engine.runs import load_model
from genmodels.errors import GenmodelsError
from genmodels.jobs.evaluate import evaluate
from genmodels.jobs.generate import (
    TASKS,
    check_task,
    dataset_images,
    generate,
    run_datamodule,
)
from genmodels.jobs.train import train
from genmodels.metrics.classifier import classifier_for
from genmodels.metrics.measure import measure
from genmodels.models.base import GenerativeModel
from genmodels.sampling import from_uint8, sample_images, to_uint8

from .conftest import CONF, FAST, ROOT, compose_config
from .test_tensorboard import hparams_table

TINY = [*FAST, "trainer.max_epochs=1", "trainer.limit_train_batches=3", "test=false",
        "callbacks.image_grids.save_dir=null"]


def tool_config(name: str, *overrides: str):
    """The config of `python <name>.py overrides...`."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(name, overrides=list(overrides))


@pytest.fixture(scope="module")
def vae_run(tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("runs") / "vae"
    train(compose_config(["model=vae", *TINY], run_dir))
    return run_dir


@pytest.fixture(scope="module")
def classifier_cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("classifiers")


def test_generate_writes_seeded_samples_and_never_overwrites(vae_run, tmp_path):
    png, npz = generate(tool_config("generate", f"run={vae_run}", "num=12", "seed=3"))
    assert png.parent == vae_run / "generated" and png.exists()
    step = torch.load(vae_run / "checkpoints/last.ckpt", weights_only=False)["global_step"]
    assert re.fullmatch(rf"samples_last_step{step}_seed3_n12_[0-9a-f]{{6}}\.png", png.name)
    images = np.load(npz)["images"]
    assert images.shape == (12, 1, 28, 28) and images.dtype == np.uint8
    _, again = generate(tool_config("generate", f"run={vae_run}", "num=12", "seed=3",
                                    f"out={tmp_path / 'again'}"))
    assert np.array_equal(np.load(again)["images"], images)  # the seed fixes the samples
    with pytest.raises(GenmodelsError, match="already exists; refusing to overwrite"):
        generate(tool_config("generate", f"run={vae_run}", "num=12", "seed=3"))
    _, colder = generate(tool_config("generate", f"ckpt={vae_run / 'checkpoints/last.ckpt'}",
                                     "num=12", "seed=3", "temperature=0.1",
                                     f"out={tmp_path / 'cold.png'}"))
    assert np.load(colder)["images"].std(0).mean() < images.std(0).mean()
    # Another option, by default: a file of its own, not a refusal of the earlier one.
    warmer, _ = generate(tool_config("generate", f"run={vae_run}", "num=12", "seed=3",
                                     "temperature=0.7"))
    assert warmer != png and warmer.name.startswith(f"samples_last_step{step}_seed3_n12_")


def test_generate_reconstructs_dataset_images_and_files(vae_run, tmp_path):
    _, npz = generate(tool_config("generate", f"run={vae_run}", "task=reconstruct", "num=8",
                                  f"out={tmp_path / 'split'}"))
    arrays = np.load(npz)
    assert arrays["inputs"].shape == arrays["reconstructions"].shape == (8, 1, 28, 28)
    from PIL import Image

    (tmp_path / "digits").mkdir()
    for i in range(3):
        Image.fromarray(arrays["inputs"][i, 0]).save(tmp_path / "digits" / f"{i}.png")
    _, npz = generate(tool_config("generate", f"run={vae_run}", "task=reconstruct",
                                  f"images={tmp_path / 'digits'}", f"out={tmp_path / 'files'}"))
    assert np.array_equal(np.load(npz)["inputs"], arrays["inputs"][:3])


def test_generate_explains_options_the_model_lacks(vae_run, tmp_path):
    def attempt(*overrides):
        generate(tool_config("generate", f"run={vae_run}", f"out={tmp_path / 'x'}", *overrides))

    with pytest.raises(GenmodelsError, match="needs a conditional model"):
        attempt("labels=[1,2]")
    with pytest.raises(GenmodelsError, match="EMA copy of its generator"):
        attempt("ema=true")
    with pytest.raises(GenmodelsError, match="exactly one of run="):
        generate(tool_config("generate"))
    with pytest.raises(GenmodelsError, match="valid choices"):
        attempt("task=nope")


def test_generate_interpolates_between_seeds_and_dataset_images(vae_run, tmp_path):
    model = load_model(vae_run)
    _, npz = generate(tool_config("generate", f"run={vae_run}", "task=interpolate",
                                  "seeds=[1,2,3,4]", "steps=5", f"out={tmp_path / 'seeds'}"))
    images = torch.from_numpy(np.load(npz)["images"])
    assert images.shape == (10, 1, 28, 28)
    for position, seed in ((0, 1), (4, 2), (5, 3), (9, 4)):  # each row: from one draw to the next
        z = torch.randn(10, generator=torch.Generator().manual_seed(seed))
        assert torch.equal(images[position], to_uint8(model, model.decode(z[None]))[0])
    _, npz = generate(tool_config("generate", f"run={vae_run}", "task=interpolate",
                                  "indices=[0,5]", "steps=4", "method=slerp",
                                  f"out={tmp_path / 'pair'}"))
    arrays = np.load(npz)
    test_images = dataset_images(tool_config("generate", f"run={vae_run}"), "test")
    assert np.array_equal(arrays["inputs"], test_images[[0, 5]].numpy())
    ends = to_uint8(model, model.reconstruct(from_uint8(model, test_images[[0, 5]])))
    path = torch.from_numpy(arrays["images"]).int()
    assert (path[[0, -1]] - ends.int()).abs().max() <= 1  # from one reconstruction to the other
    from PIL import Image

    for i in (0, 5):
        Image.fromarray(arrays["inputs"][int(i > 0), 0]).save(tmp_path / f"{i}.png")
    files = f"images=[{tmp_path / '0.png'},{tmp_path / '5.png'}]"
    _, npz = generate(tool_config("generate", f"run={vae_run}", "task=interpolate", files,
                                  "steps=4", "method=slerp", f"out={tmp_path / 'files'}"))
    assert np.array_equal(np.load(npz)["images"], arrays["images"])
    with pytest.raises(GenmodelsError, match="must come in pairs"):
        generate(tool_config("generate", f"run={vae_run}", "task=interpolate",
                             "indices=[0,1,2]", f"out={tmp_path / 'odd'}"))


def test_generate_shifts_images_along_a_class_attribute_vector(vae_run, tmp_path):
    model = load_model(vae_run)
    _, npz = generate(tool_config("generate", f"run={vae_run}", "task=arithmetic",
                                  "attribute=3", "rows=3", "multiples=[0,1]",
                                  f"out={tmp_path / 'threes'}"))
    arrays = np.load(npz)
    assert arrays["images"].shape == (6, 1, 28, 28) and arrays["vector"].shape == (10,)
    inputs = torch.from_numpy(arrays["inputs"])
    recon = to_uint8(model, model.reconstruct(from_uint8(model, inputs)))
    shown = torch.from_numpy(arrays["images"]).int()
    assert (shown[0::2] - recon.int()).abs().max() <= 1  # multiple 0: the reconstruction
    train_images, labels = run_datamodule(tool_config("generate", f"run={vae_run}")
                                          ).splits["train"]
    codings = latent.encode_all(model, from_uint8(model, train_images))
    vector = codings[labels == 3].mean(0) - codings[labels != 3].mean(0)
    assert torch.allclose(torch.from_numpy(arrays["vector"]), vector, atol=1e-5)
    shifted = model.decode(model.encode(from_uint8(model, inputs)) + vector)
    assert (shown[1::2] - to_uint8(model, shifted).int()).abs().max() <= 1  # multiple 1
    for attribute, message in (("42", r"valid choices: a class label \[0, 1"),
                               ("Smiling", "neither a class label nor an attribute name")):
        with pytest.raises(GenmodelsError, match=message):
            generate(tool_config("generate", f"run={vae_run}", "task=arithmetic",
                                 f"attribute={attribute}", f"out={tmp_path / 'bad'}"))


def test_manifold_and_semantic_grids_and_tasks_a_model_lacks(vae_run, tmp_path):
    semantic = generate(tool_config("generate", f"run={vae_run}", "task=semantic", "nrow=4",
                                    f"out={tmp_path / 'semantic'}"))[1]
    assert np.load(semantic)["images"].shape == (16, 1, 28, 28)
    with pytest.raises(GenmodelsError, match="2-d latent space; this model's has 10 "
                                             r"dimensions; valid tasks for this model: "):
        generate(tool_config("generate", f"run={vae_run}", "task=manifold",
                             f"out={tmp_path / 'manifold'}"))
    model = build(compose_config(["model=vae", "model.latent_dim=2"], tmp_path).model).eval()
    cfg = tool_config("generate", "task=manifold", "nrow=5", "quantiles=true")
    images, _, nrow = TASKS["manifold"](model, cfg)
    centre = to_uint8(model, model.decode(torch.zeros(1, 2)))[0]  # the median of N(0, I)
    assert images.shape == (25, 1, 28, 28) and nrow == 5 and torch.equal(images[12], centre)
    with pytest.raises(GenmodelsError, match=r"valid tasks for this model: \['samples'\]"):
        check_task(ConditionalStub(), "interpolate")


def test_top_activations_shows_each_coding_units_strongest_images(vae_run, tmp_path):
    from genmodels.jobs.generate import dataset_images
    from genmodels.latent import encode_all

    cfg = tool_config("generate", f"run={vae_run}", "task=top_activations", "nrow=5",
                      f"out={tmp_path / 'top'}")
    png, npz = generate(cfg)
    saved = np.load(npz)
    split = dataset_images(cfg, "test")
    model = load_model(vae_run)
    codings = encode_all(model, from_uint8(model, split)).flatten(1)  # 10 units
    assert saved["images"].shape == (10 * 5, 1, 28, 28) and png.exists()
    for unit, (indices, activations) in enumerate(zip(saved["indices"], saved["activations"],
                                                      strict=True)):
        # the unit's 5 highest codings over the whole split, highest first
        assert np.array_equal(activations, codings[indices, unit].numpy())
        assert activations[-1] >= codings[:, unit].sort(descending=True).values[4].item()
        assert np.all(np.diff(activations) <= 0)
        assert np.array_equal(saved["images"][5 * unit : 5 * unit + 5], split[indices].numpy())
    assert len({tuple(i) for i in saved["indices"]}) > 1  # units differ


class ConditionalStub(GenerativeModel):
    """A 'conditional model' whose image brightness is its class label / 9."""

    num_classes = 10

    def __init__(self):
        super().__init__(1, 8, [0.0, 1.0])

    def sample(self, n, generator=None, labels=None):
        return (labels.float() / 9).view(-1, 1, 1, 1).expand(-1, 1, 8, 8)


def test_labels_reach_conditional_models_and_ema_passes_through():
    model = ConditionalStub()
    images = sample_images(model, 6, labels=[2, 7], batch_size=4)
    assert images[:, 0, 0, 0].tolist() == [57, 198, 57, 198, 57, 198]  # round(255 * c / 9)
    with pytest.raises(GenmodelsError, match=r"labels \[12\] are not classes"):
        sample_images(model, 2, labels=[12])

    class WithEma(GenerativeModel):
        def __init__(self):
            super().__init__(1, 8, [0.0, 1.0])
            self.generator_ema = nn.Identity()

        def sample(self, n, generator=None, ema=None):
            seen.append(ema)
            return torch.zeros(n, 1, 8, 8)

    seen, model = [], WithEma()
    for ema in (None, False, True):
        sample_images(model, 2, ema=ema)
    assert seen == [None, False, True]
    model.generator_ema = None
    with pytest.raises(GenmodelsError, match="EMA copy of its generator"):
        sample_images(model, 2, ema=True)


def test_evaluate_writes_json_and_tensorboard_hparams(vae_run, classifier_cache, monkeypatch,
                                                     capsys):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cfg = tool_config("evaluate", f"run={vae_run}", "num_samples=300",
                      f"classifier_cache={classifier_cache}", "classifier_epochs=2",
                      "nll_samples=4")
    monkeypatch.setattr("genmodels.jobs.evaluate.PROGRESS_FROM", 300)  # long from 300 on here
    result = evaluate(cfg)
    assert "Sampling" in capsys.readouterr().err  # the progress bar of a long evaluation
    path = max((vae_run / "evaluation").glob("last_step*_test_*.json"),
               key=lambda p: p.stat().st_mtime)
    assert json.loads(path.read_text()) == result
    assert re.fullmatch(rf"last_step{result['global_step']}_test_[0-9a-f]{{6}}\.json", path.name)
    metrics = result["metrics"]
    for name in ("fd_classifier", "kid_classifier", "precision", "recall", "density",
                 "coverage", "modes_covered", "kl_to_real_classes", "reconstruction_mse",
                 "classifier_accuracy_real"):
        assert np.isfinite(metrics[name]), name
    assert metrics["fd_classifier"] > 0 and 1 <= metrics["modes_covered"] <= 10
    assert metrics["classifier_accuracy_real"] > 0.7
    # The NLL follows the likelihood module's own convention for a run's split (its
    # images scaled as in training), with evaluate's seed and batch size.
    from genmodels.jobs.likelihood import split_images
    from genmodels.metrics.likelihood import importance_sampled_nll, negative_elbo

    model, images = load_model(vae_run), split_images(str(vae_run), "test")
    expected = importance_sampled_nll(model, images, k=4, batch_size=cfg.batch_size,
                                      generator=torch.Generator().manual_seed(0))
    assert metrics["nll_importance_sampled"] == pytest.approx(expected, rel=1e-6)
    assert 0 < metrics["nll_importance_sampled"] < negative_elbo(model, images) + 5
    torch.manual_seed(cfg.seed)  # the -ELBO's one posterior sample per image
    assert metrics["neg_elbo"] == pytest.approx(negative_elbo(model, images), rel=1e-6)
    events = EventAccumulator(str(vae_run / "tensorboard" / "evaluation" / path.stem))
    events.Reload()
    assert "eval/fd_classifier" in events.Tags()["scalars"]
    # The run's own HPARAMS row: its final training metrics and this evaluation's, side by
    # side (one row per run, not one per evaluation).
    table = hparams_table(vae_run / "tensorboard")
    assert list(table) == ["hparams"]
    row = table["hparams"]
    assert row["hparams"]["model"] == "vae" and "hp/val/loss" in row["metrics"]
    assert row["metrics"]["hp/eval/fd_classifier"] == pytest.approx(metrics["fd_classifier"])
    with pytest.raises(GenmodelsError, match="refusing to overwrite"):
        evaluate(cfg)


def test_evaluate_with_inception_draws_the_samples_once_for_every_metric(
        vae_run, classifier_cache, monkeypatch, tmp_path):
    """inception_weights=<file>: the Inception metrics score the very samples the
    classifier metrics scored, drawn once (drawing them again doubled the sampling time of
    an evaluation). torch-fidelity and the weights are stood in for: only what reaches
    the Inception metrics matters here."""
    model_class = type(load_model(vae_run))
    drawn = []
    sample = model_class.sample

    def counted_sample(self, n, *args, **kwargs):
        drawn.append(n)
        return sample(self, n, *args, **kwargs)

    received = []

    def fake_inception_metrics(weights, real, fake, seed=0):
        received.append(fake.clone())
        return {"fid_inception": 1.0}

    monkeypatch.setattr(model_class, "sample", counted_sample)
    monkeypatch.setattr("genmodels.jobs.evaluate.check_inception_available", lambda w: w)
    monkeypatch.setattr("genmodels.jobs.evaluate.inception_metrics", fake_inception_metrics)
    weights = tmp_path / "inception.pth"
    weights.write_bytes(b"")
    result = evaluate(tool_config("evaluate", f"run={vae_run}", "num_samples=120",
                                  f"classifier_cache={classifier_cache}", "classifier_epochs=2",
                                  "nll_samples=0", f"inception_weights={weights}",
                                  f"out={tmp_path / 'metrics.json'}"))
    assert sum(drawn) == 120, drawn
    # The Inception metrics had those 120 samples, as sample_images draws them from the seed.
    (fake,) = received
    model = load_model(vae_run)
    assert torch.equal(fake.cpu(), sample_images(model, 120, seed=0))
    assert result["metrics"]["fid_inception"] == 1.0 and "fd_classifier" in result["metrics"]


def tool_config_from_command_line(name: str, *overrides: str):
    """The config of `python <name>.py overrides...`, with Hydra's record of the command
    line set as under `@hydra.main` (what `check_override_types` reads)."""
    GlobalHydra.instance().clear()
    initialize_config_dir(config_dir=str(CONF), version_base="1.3")
    cfg = compose(name, overrides=list(overrides), return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        del cfg.hydra
    return cfg


@pytest.mark.parametrize("tool, overrides, message", [
    ("generate", ["num=abc"], "num=abc has the wrong type: num takes an integer"),
    ("evaluate", ["num_samples=abc"], "num_samples takes an integer"),
    # Each sample is kept in memory: a huge count is refused before anything is loaded.
    ("evaluate", ["num_samples=100000000"],
     "num_samples must be between 2 and 100,000 .*got 100,000,000"),
    ("evaluate", ["num_samples=1"], "num_samples must be between 2 and 100,000"),
])
def test_generate_and_evaluate_refuse_bad_counts_in_one_sentence(tool, overrides, message,
                                                                  tmp_path):
    cfg = tool_config_from_command_line(tool, f"run={tmp_path / 'no_run'}", *overrides)
    job = generate if tool == "generate" else evaluate
    try:
        with pytest.raises(GenmodelsError, match=message):
            job(cfg)
    finally:
        GlobalHydra.instance().clear()


def test_sampling_shows_a_progress_bar_when_asked(capsys):
    sample_images(ConditionalStub(), 6, labels=[1], batch_size=2)
    assert "Sampling" not in capsys.readouterr().err
    sample_images(ConditionalStub(), 6, labels=[1], batch_size=2, progress=True)
    bar = capsys.readouterr().err
    assert "Sampling" in bar and "/3" in bar  # three batches of two


class Collapsed(GenerativeModel):
    """A generator that has collapsed onto one image."""

    def __init__(self, image: torch.Tensor):
        super().__init__(1, 28, [0.0, 1.0])
        self.register_buffer("image", image.float() / 255)

    def sample(self, n, generator=None):
        return self.image.expand(n, -1, -1, -1)


def test_mode_coverage_of_a_collapsed_generator_is_one_mode(classifier_cache):
    digits = DigitsDataModule(seed=42)  # the runs' split: their cached classifier is reused
    digits.setup()
    classifier = classifier_for(digits, classifier_cache, epochs=2)
    real, labels = digits.splits["test"]
    collapsed = measure(Collapsed(real[0]), classifier, real, labels, num_samples=200)
    assert collapsed["modes_covered"] == 1
    assert collapsed["kl_to_real_classes"] > 2.0  # about log(10)
    assert collapsed["recall"] < 0.1 and collapsed["coverage"] < 0.1


def test_sample_quality_callback_logs_lower_fd_for_a_trained_model(make_config,
                                                                     classifier_cache):
    """The same run twice, once with a zero learning rate: the logged val/fd_classifier
    of the trained VAE is well below that of the untrained one (about 280 against 460)."""
    def fd(lr: float, name: str) -> dict[str, float]:
        cfg = make_config("model=vae", "callbacks=quality", *FAST, "trainer.max_epochs=1",
                          "trainer.limit_train_batches=20", "trainer.limit_val_batches=1",
                          "test=false", "callbacks.image_grids.save_dir=null",
                          "callbacks.sample_quality.every_n_epochs=1",
                          "callbacks.sample_quality.num_samples=100",
                          "callbacks.sample_quality.classifier_epochs=2",
                          f"callbacks.sample_quality.cache_dir={classifier_cache}",
                          f"model.optimizer.lr={lr}", "optimized_metric=val/fd_classifier",
                          run_name=name)
        return train(cfg)

    trained, untrained = fd(3e-3, "trained"), fd(0.0, "untrained")
    assert "val/modes_covered" in trained
    assert 0 < trained["val/fd_classifier"] < 0.8 * untrained["val/fd_classifier"], (
        trained["val/fd_classifier"], untrained["val/fd_classifier"])


class Spy:
    """Stands in for the trainer, strategy and module around the callback on one rank."""

    def __init__(self, rank: int, broadcast_value):
        self.sanity_checking, self.current_epoch = False, 0
        self.is_global_zero, self.strategy = rank == 0, self
        self.broadcast_value, self.broadcast_calls, self.logged = broadcast_value, [], {}

    def broadcast(self, obj, src=0):
        self.broadcast_calls.append((obj, src))
        return obj if self.is_global_zero else self.broadcast_value

    def log(self, name, value, **kwargs):
        self.logged[name] = value


def test_sample_quality_is_measured_on_rank_zero_and_shared_with_the_others(monkeypatch):
    from genmodels.callbacks import SampleQuality

    measured = []

    def measure(self, trainer, pl_module):
        measured.append(trainer)
        return {"fd_classifier": 12.5, "precision": 0.75}

    monkeypatch.setattr(SampleQuality, "measure", measure)
    callback = SampleQuality(every_n_epochs=1)
    zero, other = Spy(0, None), Spy(1, {"fd_classifier": 12.5, "precision": 0.75})
    for rank in (zero, other):
        callback.on_validation_epoch_end(rank, rank)
    assert measured == [zero]  # rank 1 never samples nor trains a classifier
    assert zero.broadcast_calls == [({"fd_classifier": 12.5, "precision": 0.75}, 0)]
    assert other.broadcast_calls == [(None, 0)]  # it joins the broadcast, so nobody hangs
    assert zero.logged == other.logged == {"val/fd_classifier": 12.5, "val/precision": 0.75}
    zero.current_epoch = other.current_epoch = 2
    callback.every_n_epochs = 2  # not a measuring epoch: no rank enters the collective
    for rank in (zero, other):
        callback.on_validation_epoch_end(rank, rank)
    assert len(zero.broadcast_calls) == len(other.broadcast_calls) == 1



def test_a_failed_sample_quality_measurement_stops_every_rank_instead_of_hanging(monkeypatch):
    from genmodels.callbacks import SampleQuality

    def measure(self, trainer, pl_module):
        raise OSError("No space left on device: the classifier cache")

    monkeypatch.setattr(SampleQuality, "measure", measure)
    callback = SampleQuality(every_n_epochs=1)
    zero = Spy(0, None)
    with pytest.raises(OSError, match="No space left"):  # rank 0: its own error
        callback.on_validation_epoch_end(zero, zero)
    # ...raised after the broadcast, which sent the error to the ranks waiting there
    sent = "OSError: No space left on device: the classifier cache"
    assert zero.broadcast_calls == [(sent, 0)]
    other = Spy(1, sent)
    with pytest.raises(GenmodelsError, match="measurement failed on rank 0: OSError: No space"):
        callback.on_validation_epoch_end(other, other)
    assert other.broadcast_calls == [(None, 0)] and other.logged == {}

class ClassPool(GenerativeModel):
    """A 'conditional generator' that answers each label with real images of a chosen
    class, `shift` classes away (0: always right)."""

    num_classes = 10

    def __init__(self, pools: list[torch.Tensor], shift: int):
        super().__init__(1, 28, [0.0, 1.0])
        self.pools, self.shift = pools, shift

    def sample(self, n, generator=None, labels=None):
        chosen = [self.pools[(int(c) + self.shift) % 10][i % len(self.pools[0])]
                  for i, c in enumerate(labels)]
        return torch.stack(chosen).float() / 255


def test_conditional_accuracy_of_right_wrong_and_half_right_generators(classifier_cache):
    digits = DigitsDataModule(seed=42)
    digits.setup()
    classifier = classifier_for(digits, classifier_cache, epochs=2)
    real, labels = digits.splits["test"]
    recognised = classifier.predict(real) == labels  # the classifier's own mistakes aside
    pools = [real[recognised & (labels == c)][:3] for c in range(10)]
    right = measure(ClassPool(pools, 0), classifier, real, labels, num_samples=100)
    assert right["conditional_accuracy"] == 1.0
    wrong = measure(ClassPool(pools, 1), classifier, real, labels, num_samples=100)
    assert wrong["conditional_accuracy"] == 0.0
    half = ClassPool(pools, 0)
    half.pools = [pools[c] if c % 2 == 0 else pools[(c + 1) % 10] for c in range(10)]
    half_right = measure(half, classifier, real, labels, num_samples=100)
    assert half_right["conditional_accuracy"] == 0.5
    assert [half_right[f"conditional_accuracy_class{c}"] for c in range(10)] == [1.0, 0.0] * 5


class NoisyReconstruction(GenerativeModel):
    """Reconstructs each pixel off by +-`error` (in [0, 1] units), in its value range."""

    def __init__(self, error: float, value_range):
        super().__init__(1, 8, value_range)
        self.error = error

    def reconstruct(self, x):
        low, high = self.value_range
        signs = torch.ones_like(x).flatten()
        signs[1::2] = -1
        return x + self.error * (high - low) * signs.view_as(x)


def test_reconstruction_mse_is_zero_for_identity_and_the_error_variance_otherwise():
    from genmodels.metrics.measure import reconstruction_mse

    # Grey levels 0.1 away from black and white, so that no error is clipped.
    images = torch.randint(26, 230, (50, 1, 8, 8), dtype=torch.uint8,
                           generator=torch.Generator().manual_seed(0))
    for value_range in ([0.0, 1.0], [-1.0, 1.0]):
        assert reconstruction_mse(NoisyReconstruction(0.0, value_range), images) == 0.0
        mse = reconstruction_mse(NoisyReconstruction(0.1, value_range), images, batch_size=7)
        assert mse == pytest.approx(0.01, rel=1e-4), value_range


@pytest.fixture(scope="module")
def gan_runs(tmp_path_factory) -> dict[str, Path]:
    """A conditional GAN and a GAN with an EMA generator, each trained for a few steps."""
    root = tmp_path_factory.mktemp("gans")
    runs = {"cgan": root / "cgan", "ema": root / "ema"}
    small = ["model.generator.network.widths=[16,8]", "model.discriminator.network.widths=[8,16]"]
    train(compose_config(["model=cgan", *TINY, *small], runs["cgan"]))
    train(compose_config(["model=dcgan", "model.ema_decay=0.5", *TINY,
                          "model.generator.widths=[16,8]",
                          "model.discriminator.widths=[8,16]"], runs["ema"]))
    return runs


def test_generate_draws_the_requested_classes_from_a_trained_cgan(gan_runs, tmp_path):
    run = gan_runs["cgan"]
    model = load_model(run)
    _, npz = generate(tool_config("generate", f"run={run}", "num=6", "labels=[3,5]",
                                  f"out={tmp_path / 'pairs'}"))
    arrays = np.load(npz)
    assert arrays["labels"].tolist() == [3, 5, 3, 5, 3, 5]
    expected = to_uint8(model, model.sample(6, torch.Generator().manual_seed(0),
                                            labels=torch.tensor([3, 5, 3, 5, 3, 5])))
    assert torch.equal(torch.from_numpy(arrays["images"]), expected)
    _, threes = generate(tool_config("generate", f"run={run}", "num=4", "labels=[3]",
                                     f"out={tmp_path / 'threes'}"))
    _, fives = generate(tool_config("generate", f"run={run}", "num=4", "labels=[5]",
                                    f"out={tmp_path / 'fives'}"))
    assert not np.array_equal(np.load(threes)["images"], np.load(fives)["images"])


def test_evaluate_scores_a_trained_cgan_per_class(gan_runs, classifier_cache):
    run = gan_runs["cgan"]
    result = evaluate(tool_config("evaluate", f"run={run}", "num_samples=100",
                                  f"classifier_cache={classifier_cache}", "classifier_epochs=2"))
    metrics = result["metrics"]
    digits = DigitsDataModule(seed=42)
    digits.setup()
    classifier = classifier_for(digits, classifier_cache, epochs=2)
    fake = sample_images(load_model(run), 100, seed=0, labels=list(range(10)))
    correct = classifier.predict(fake) == torch.arange(100) % 10
    assert metrics["conditional_accuracy"] == pytest.approx(correct.float().mean().item())
    for c in (0, 7):
        assert metrics[f"conditional_accuracy_class{c}"] == pytest.approx(
            correct[c::10].float().mean().item())
    assert "reconstruction_mse" not in metrics and "nll_importance_sampled" not in metrics


def test_generate_and_evaluate_use_the_ema_generator_unless_told_otherwise(gan_runs, tmp_path,
                                                                            classifier_cache):
    run = gan_runs["ema"]
    model = load_model(run)
    assert not torch.equal(next(model.generator_ema.parameters()),
                           next(model.generator.parameters()))
    images = {}
    for ema in ("null", "true", "false"):
        _, npz = generate(tool_config("generate", f"run={run}", "num=8", f"ema={ema}",
                                      f"out={tmp_path / ema}"))
        images[ema] = np.load(npz)["images"]
    assert np.array_equal(images["null"], images["true"])
    assert not np.array_equal(images["true"], images["false"])
    live = to_uint8(model, model.generate(8, model.generator, torch.Generator().manual_seed(0))[0])
    assert np.array_equal(images["false"], live.numpy())
    scores = {}
    for ema in ("null", "true", "false"):
        result = evaluate(tool_config("evaluate", f"run={run}", "num_samples=100", f"ema={ema}",
                                      f"classifier_cache={classifier_cache}",
                                      "classifier_epochs=2"))
        scores[ema] = result["metrics"]["fd_classifier"]
    names = sorted(p.name.split("_step")[1].split("_", 1)[1]
                   for p in (run / "evaluation").iterdir())
    assert [name[:-len("_123456.json")] for name in names] == ["test", "test_ema", "test_live"]
    assert scores["null"] == scores["true"] != scores["false"]


def test_command_lines_run_and_report_errors_without_traceback(vae_run, tmp_path,
                                                              classifier_cache):
    env = {**os.environ, "HYDRA_FULL_ERROR": "0"}

    def run(script, *args):
        return subprocess.run([sys.executable, str(ROOT / script), *args], cwd=tmp_path,
                              env=env, capture_output=True, text=True, timeout=300)

    result = run("generate.py", f"run={vae_run}", "num=4", f"out={tmp_path / 'cli'}")
    assert result.returncode == 0, result.stderr[-2000:]
    assert (tmp_path / "cli.png").exists() and (tmp_path / "cli.npz").exists()
    assert not (tmp_path / ".hydra").exists() and not (tmp_path / "outputs").exists()
    result = run("evaluate.py", f"run={tmp_path / 'nothing'}")
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert "Error: No checkpoint at" in result.stderr


def test_a_gan_walks_between_seeds_through_its_ema_generator(gan_runs, tmp_path):
    run = gan_runs["ema"]
    model = load_model(run)
    _, npz = generate(tool_config("generate", f"run={run}", "task=interpolate",
                                  "seeds=[1,2]", "steps=5", "method=slerp",
                                  f"out={tmp_path / 'walk'}"))
    images = torch.from_numpy(np.load(npz)["images"])
    ends = torch.stack([torch.randn(100, generator=torch.Generator().manual_seed(s))
                        for s in (1, 2)])
    # From G_ema(z_1) to G_ema(z_2), along the great circle between the two draws
    expected = to_uint8(model, model.generator_ema.eval()(latent.slerp(
        ends[0], ends[1], torch.linspace(0, 1, 5))))
    assert torch.equal(images, expected)
    assert not torch.equal(images[0], images[-1])
    # Without seeds it walks between seeds 0, 1, ..., 2 * rows - 1 (it has no encoder)
    _, npz = generate(tool_config("generate", f"run={run}", "task=interpolate", "rows=2",
                                  "steps=3", f"out={tmp_path / 'default'}"))
    assert np.load(npz)["seeds"].tolist() == [0, 1, 2, 3]
    with pytest.raises(GenmodelsError, match="Interpolating between images needs an encoder, "
                                             "which GAN lacks: walk between prior draws"):
        generate(tool_config("generate", f"run={run}", "task=interpolate", "indices=[0,1]"))


def test_a_conditional_gan_walks_between_seeds_within_a_class_per_row(gan_runs, tmp_path):
    run = gan_runs["cgan"]
    model = load_model(run)
    _, npz = generate(tool_config("generate", f"run={run}", "task=interpolate",
                                  "seeds=[1,2,3,4]", "labels=[3,7]", "steps=4",
                                  f"out={tmp_path / 'walk'}"))
    arrays = np.load(npz)
    assert arrays["labels"].tolist() == [3, 7]
    ends = [torch.randn(100, generator=torch.Generator().manual_seed(s)) for s in (1, 2, 3, 4)]
    t = torch.linspace(0, 1, 4)[:, None]
    for row, (label, (a, b)) in enumerate(zip((3, 7), ((0, 1), (2, 3)), strict=True)):
        z = torch.lerp(ends[a], ends[b], t)
        expected = to_uint8(model, model.generator.eval()(z, torch.full((4,), label)))
        assert torch.equal(torch.from_numpy(arrays["images"][4 * row: 4 * row + 4]), expected)
    with pytest.raises(GenmodelsError, match=r"labels=\[3\] applies to conditional models"):
        generate(tool_config("generate", f"run={gan_runs['ema']}", "task=interpolate",
                             "labels=[3]", f"out={tmp_path / 'plain'}"))
    # Without labels, row r keeps class r (0, 1, 2, ...).
    _, npz = generate(tool_config("generate", f"run={run}", "task=interpolate", "rows=3",
                                  "steps=2", f"out={tmp_path / 'default'}"))
    assert np.load(npz)["labels"].tolist() == [0, 1, 2]


def test_a_conditional_gans_semantic_grid_keeps_one_class(gan_runs, tmp_path):
    run = gan_runs["cgan"]
    model = load_model(run)
    _, npz = generate(tool_config("generate", f"run={run}", "task=semantic", "nrow=4",
                                  "labels=[7]", f"out={tmp_path / 'sevens'}"))
    arrays = np.load(npz)
    assert arrays["labels"].tolist() == [7]
    # The grid of the unconditional task (bilinear between a 3x3 of draws), all of class 7
    corners = torch.randn(1, 100, 3, 3, generator=torch.Generator().manual_seed(0))
    z = F.interpolate(corners, size=(4, 4), mode="bilinear", align_corners=True)
    expected = to_uint8(model, model.generator.eval()(z[0].flatten(1).T,
                                                      torch.full((16,), 7)))
    assert torch.equal(torch.from_numpy(arrays["images"]), expected)
    _, npz = generate(tool_config("generate", f"run={run}", "task=semantic", "nrow=4",
                                  f"out={tmp_path / 'default'}"))
    assert np.load(npz)["labels"].tolist() == [0]  # by default the first class
    with pytest.raises(GenmodelsError, match=r"task=semantic draws one grid of one class: "
                                             r"give one label, e.g. labels=\[1\]"):
        generate(tool_config("generate", f"run={run}", "task=semantic", "labels=[1,2]"))
