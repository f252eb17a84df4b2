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
from torch import nn

from genmodels.data import DigitsDataModule
from genmodels.errors import GenmodelsError
from genmodels.evaluate import evaluate, measure
from genmodels.generate import generate, sample_images
from genmodels.metrics.classifier import classifier_for
from genmodels.models.base import GenerativeModel
from genmodels.training import train

from .conftest import CONF, FAST, ROOT, compose_config

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


class ConditionalStub(GenerativeModel):
    """A 'conditional model' whose image brightness is its class label / 9."""

    num_classes = 10

    def __init__(self):
        super().__init__(1, 8, [0.0, 1.0])
        self.generator = self.ema_generator = None

    def sample(self, n, generator=None, labels=None):
        return (labels.float() / 9).view(-1, 1, 1, 1).expand(-1, 1, 8, 8)


def test_labels_reach_conditional_models_and_ema_swaps_generators():
    model = ConditionalStub()
    images = sample_images(model, 6, labels=[2, 7], batch_size=4)
    assert images[:, 0, 0, 0].tolist() == [57, 198, 57, 198, 57, 198]  # round(255 * c / 9)
    with pytest.raises(GenmodelsError, match=r"labels \[12\] are not classes"):
        sample_images(model, 2, labels=[12])

    class WithEma(GenerativeModel):
        def __init__(self):
            super().__init__(1, 8, [0.0, 1.0])
            self.generator, self.ema_generator = nn.Identity(), nn.Identity()

        def sample(self, n, generator=None):
            seen.append(self.generator)
            return torch.zeros(n, 1, 8, 8)

    seen, model = [], WithEma()
    sample_images(model, 2, ema=True)
    assert seen == [model.ema_generator] and model.generator is not model.ema_generator


def test_evaluate_writes_json_and_tensorboard_hparams(vae_run, classifier_cache):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cfg = tool_config("evaluate", f"run={vae_run}", "num_samples=300",
                      f"classifier_cache={classifier_cache}", "classifier_epochs=2",
                      "nll_samples=4")
    result = evaluate(cfg)
    path = vae_run / "evaluation" / "last_test.json"
    assert json.loads(path.read_text()) == result
    metrics = result["metrics"]
    for name in ("fd_classifier", "kid_classifier", "precision", "recall", "density",
                 "coverage", "modes_covered", "kl_to_real_classes", "reconstruction_mse",
                 "classifier_accuracy_real"):
        assert np.isfinite(metrics[name]), name
    assert metrics["fd_classifier"] > 0 and 1 <= metrics["modes_covered"] <= 10
    assert metrics["classifier_accuracy_real"] > 0.7
    events = EventAccumulator(str(vae_run / "tensorboard" / "evaluation" / "last_test"))
    events.Reload()
    assert "eval/fd_classifier" in events.Tags()["scalars"]
    hparams = events.PluginTagToContent("hparams")
    assert b"eval/fd_classifier" in hparams["_hparams_/experiment"]
    assert b"model/latent_dim" in hparams["_hparams_/session_start_info"]
    with pytest.raises(GenmodelsError, match="refusing to overwrite"):
        evaluate(cfg)


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
