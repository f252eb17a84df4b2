"""Every config option composes and builds; bad options are named with the valid ones."""

import importlib.util
import json

import pytest
from hydra.utils import instantiate

from genmodels.config import build
from genmodels.errors import GenmodelsError
from genmodels.models import GenerativeModel

from .conftest import CONF, FAST, ROOT, compose_config, run_train

# Models that truly cannot work at a size, with the error they give.
CANNOT_BUILD = {("dcgan64", 28): "needs image_size divisible by 16, got 28"}


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


def test_every_group_has_the_options_the_docs_promise():
    assert {"ae", "vae", "dcgan"} <= set(options("model"))
    assert {"mnist", "fashion", "cifar10", "celeba", "digits", "folder"} <= set(options("dataset"))
    assert {"default", "cpu", "gpu", "ddp", "ddp_cpu", "debug"} <= set(options("trainer"))
    assert {"tensorboard", "csv"} <= set(options("logger"))
    assert "default" in options("callbacks")
    assert {"fdr", "limit", "overfit", "profiler"} <= set(options("debug"))


@pytest.mark.parametrize(("option", "settings"), [
    ("fdr", {"fast_dev_run": True}),
    ("limit", {"max_epochs": 2, "limit_train_batches": 4, "detect_anomaly": True}),
    ("overfit", {"overfit_batches": 2}),
    ("profiler", {"profiler": "simple", "max_epochs": 1}),
])
def test_debug_options_set_lightnings_debugging_switches(option, settings, tmp_path):
    trainer = compose_config([f"debug={option}"], tmp_path).trainer
    assert {key: trainer[key] for key in settings} == settings
    assert "fast_dev_run" not in compose_config([], tmp_path).trainer  # off by default


def test_debug_fdr_runs_one_batch_and_writes_no_checkpoint(tmp_path):
    from genmodels.jobs.train import train

    summary = train(compose_config(["debug=fdr", "model=ae", *FAST], tmp_path / "run"))
    assert "val/loss" in summary and "test/loss" in summary
    record = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert record["global_step"] == 1 and not (tmp_path / "run" / "checkpoints").exists()


@pytest.mark.parametrize("group", ["model", "dataset", "trainer", "logger", "callbacks"])
def test_every_option_composes(group, tmp_path):
    for option in options(group):
        cfg = compose_config([f"{group}={option}"], tmp_path)
        assert cfg[group] is not None, option


@pytest.mark.parametrize("model", options("model"))
@pytest.mark.parametrize("shape", [(1, 28), (3, 32)])
def test_every_model_builds_for_any_image_shape(model, shape, tmp_path):
    channels, size = shape
    cfg = compose_config([f"model={model}", f"dataset.channels={channels}",
                          f"dataset.image_size={size}"], tmp_path)
    if (model, size) in CANNOT_BUILD:
        with pytest.raises(GenmodelsError, match=CANNOT_BUILD[model, size]):
            build(cfg.model)
        pytest.skip(f"{model} cannot work at {size}x{size}: {CANNOT_BUILD[model, size]}")
    net = build(cfg.model)
    assert isinstance(net, GenerativeModel)
    images = net.eval().sample(5)
    assert images.shape == (5, channels, size, size)
    low, high = net.value_range
    assert images.min() >= low and images.max() <= high


@pytest.mark.parametrize("dataset", options("dataset"))
def test_every_dataset_builds_without_loading(dataset, tmp_path):
    datamodule = build(compose_config([f"dataset={dataset}"], tmp_path).dataset)
    assert datamodule.image_size > 0 and not datamodule.splits


@pytest.mark.parametrize("trainer", ["default", "cpu", "ddp_cpu", "debug"])
def test_cpu_trainers_build(trainer, tmp_path):
    cfg = compose_config([f"trainer={trainer}"], tmp_path)
    assert instantiate(cfg.trainer, logger=False).max_epochs >= 1


# Loggers whose package genmodels does not install: built where it is installed.
OPTIONAL_LOGGERS = {"wandb": "wandb", "mlflow": "mlflow"}


def installed(package: str) -> bool:
    return importlib.util.find_spec(package) is not None


def test_loggers_and_callbacks_build(tmp_path):
    for logger in options("logger"):
        if logger in OPTIONAL_LOGGERS and not installed(OPTIONAL_LOGGERS[logger]):
            continue
        cfg = compose_config([f"logger={logger}"], tmp_path)
        assert all(instantiate(node) for node in cfg.logger.values())
    cfg = compose_config([], tmp_path)
    assert len([instantiate(node) for node in cfg.callbacks.values()]) == len(cfg.callbacks)


@pytest.mark.parametrize("logger", sorted(OPTIONAL_LOGGERS))
def test_a_logger_whose_package_is_missing_says_what_to_install(logger, tmp_path):
    if installed(OPTIONAL_LOGGERS[logger]):
        pytest.skip(f"{logger} is installed here")
    from genmodels.jobs.train import train

    with pytest.raises(GenmodelsError, match=rf"logger={logger} needs a package that is not "
                                             rf"installed: .*pip install -U '{logger}>="):
        train(compose_config([f"logger={logger}", "model=ae", *FAST], tmp_path / "run"))
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_precision_and_ddp_are_plain_overrides(tmp_path):
    cfg = compose_config(["trainer=ddp", "trainer.devices=4", "trainer.precision=bf16-mixed"],
                         tmp_path)
    assert cfg.trainer.strategy == "ddp" and cfg.trainer.devices == 4
    assert cfg.trainer.precision == "bf16-mixed"


def test_model_follows_the_dataset_shape_and_range(tmp_path):
    cfg = compose_config(["model=dcgan", "dataset=cifar10"], tmp_path)
    assert cfg.model.channels == 3 and cfg.model.image_size == 32
    assert list(cfg.dataset.value_range) == [-1.0, 1.0]


def test_bad_option_names_the_valid_choices(tmp_path):
    result = run_train("model=nope", cwd=tmp_path, timeout=120)
    assert result.returncode != 0
    message = result.stderr + result.stdout
    assert "Error: Unknown model=nope; valid choices: ae, beta_vae, " in message
    assert "Traceback" not in message
    result = run_train("model=dcgann", cwd=tmp_path, timeout=120)
    assert "Error: Unknown model=dcgann (did you mean dcgan?); valid choices: " in result.stderr


def test_bad_value_stops_with_one_sentence(tmp_path):
    result = run_train("model=dcgan", "dataset.image_size=30", cwd=tmp_path, timeout=120)
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    assert "image_size divisible by 4, got 30" in result.stderr


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    assert "python -m pytest" in readme and "python -m pytest" in ci
