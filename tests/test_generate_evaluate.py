"""generate.py and evaluate.py on a tiny trained run, and the training-time metrics."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import open_dict
from torch import nn

from genmodels import latent
from genmodels.config import build
from genmodels.data import DigitsDataModule
from genmodels.errors import GenmodelsError
from genmodels.evaluate import evaluate, measure
from genmodels.generate import (
    TASKS,
    check_task,
    dataset_images,
    from_uint8,
    generate,
    run_datamodule,
    sample_images,
    to_uint8,
)
from genmodels.metrics.classifier import classifier_for
from genmodels.models.base import GenerativeModel
from genmodels.runs import load_model
from genmodels.training import train

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
    assert png == vae_run / "generated" / "samples_last_seed3_n12.png" and png.exists()
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
    monkeypatch.setattr("genmodels.evaluate.PROGRESS_FROM", 300)  # long from 300 on here
    result = evaluate(cfg)
    assert "Sampling" in capsys.readouterr().err  # the progress bar of a long evaluation
    path = vae_run / "evaluation" / "last_test.json"
    assert json.loads(path.read_text()) == result
    metrics = result["metrics"]
    for name in ("fd_classifier", "kid_classifier", "precision", "recall", "density",
                 "coverage", "modes_covered", "kl_to_real_classes", "reconstruction_mse",
                 "classifier_accuracy_real"):
        assert np.isfinite(metrics[name]), name
    assert metrics["fd_classifier"] > 0 and 1 <= metrics["modes_covered"] <= 10
    assert metrics["classifier_accuracy_real"] > 0.7
    # The NLL follows the likelihood module's own convention for a run's split (its
    # images scaled as in training), with evaluate's seed and batch size.
    from genmodels.metrics.likelihood import importance_sampled_nll, negative_elbo, split_images

    model, images = load_model(vae_run), split_images(str(vae_run), "test")
    expected = importance_sampled_nll(model, images, k=4, batch_size=cfg.batch_size,
                                      generator=torch.Generator().manual_seed(0))
    assert metrics["nll_importance_sampled"] == pytest.approx(expected, rel=1e-6)
    assert 0 < metrics["nll_importance_sampled"] < negative_elbo(model, images) + 5
    events = EventAccumulator(str(vae_run / "tensorboard" / "evaluation" / "last_test"))
    events.Reload()
    assert "eval/fd_classifier" in events.Tags()["scalars"]
    # A row of its own in the HPARAMS table, with the run's hyperparameters.
    table = hparams_table(vae_run / "tensorboard")
    assert table["evaluation/last_test"]["hparams"] == table["hparams"]["hparams"]
    assert table["evaluation/last_test"]["hparams"]["model"] == "vae"
    assert "eval/fd_classifier" in table["evaluation/last_test"]["metrics"]
    with pytest.raises(GenmodelsError, match="refusing to overwrite"):
        evaluate(cfg)


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


def test_sample_quality_callback_logs_val_metrics_for_sweeps(make_config, classifier_cache):
    cfg = make_config("model=dcgan", "callbacks=quality", *TINY,
                      "callbacks.sample_quality.every_n_epochs=1",
                      "callbacks.sample_quality.num_samples=100",
                      "callbacks.sample_quality.classifier_epochs=2",
                      f"callbacks.sample_quality.cache_dir={classifier_cache}",
                      "optimized_metric=val/fd_classifier")
    metrics = train(cfg)
    assert metrics["val/fd_classifier"] > 0 and "val/modes_covered" in metrics


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
