"""Shared fixtures: composing configs as train.py would, and running train.py itself."""

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"

if os.environ.get("PYTEST_XDIST_WORKER"):
    # pytest -n 2 (the default, see pyproject.toml) runs two test processes on the
    # machine's cores: one PyTorch thread each, also in the train.py processes they start,
    # since threads that share a core wait on each other.
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)

# A fast, quiet trainer for tests: CPU, no progress bar, no model summary.
FAST = ["trainer=cpu", "trainer.enable_progress_bar=false", "trainer.enable_model_summary=false"]
# A few batches of training and validation, no test: for runs whose length does not matter.
TINY = [*FAST, "trainer.limit_train_batches=4", "trainer.limit_val_batches=2", "test=false"]
# A DCGAN with narrow layers: the same code paths at a fraction of the cost.
SMALL_DCGAN = ["model.generator.widths=[16,8]", "model.discriminator.widths=[8,16]"]
# A DDPM with a narrow U-Net whose image grids sample in 4 DDIM steps.
SMALL_DDPM = ["model.network.widths=[8,16]", "model.sample_steps=4"]


def compose_config(overrides: list[str], output_dir: Path | None = None) -> DictConfig:
    """The config `python train.py <overrides>` would run, with its outputs in output_dir."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("config", overrides=overrides, return_hydra_config=True)
    if output_dir is not None:
        with open_dict(cfg):
            cfg.paths.output_dir = str(output_dir)
            cfg.paths.log_dir = str(output_dir.parent)
            cfg.paths.data_dir = str(output_dir.parent / "data")
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        del cfg.hydra
    return cfg


@pytest.fixture
def make_config(tmp_path):
    def make(*overrides: str, run_name: str = "run") -> DictConfig:
        return compose_config(list(overrides), tmp_path / run_name)

    return make


def import_benchmark(name: str):
    """A script of benchmarks/ (outside the package) as a module, loaded once."""
    if f"benchmarks_{name}" in sys.modules:
        return sys.modules[f"benchmarks_{name}"]
    spec = importlib.util.spec_from_file_location(f"benchmarks_{name}",
                                                  ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # Hydra finds its callbacks by module name
    spec.loader.exec_module(module)
    return module


def run_train(*args: str, cwd: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    """Run `python train.py args...` in a subprocess, as a user would."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "HYDRA_FULL_ERROR": "0"}
    return subprocess.run([sys.executable, str(ROOT / "train.py"), *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)


def run_main(*args: str, script_name: str = "train") -> None:
    """A script's main (train.py's by default) in this process, as `python <script>.py
    args...` would run it."""
    spec = importlib.util.spec_from_file_location(f"{script_name}_script",
                                                  ROOT / f"{script_name}.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    # Hydra finds conf/ next to the script of a `__main__` task, as when run by path.
    script.main.__wrapped__.__module__ = "__main__"
    GlobalHydra.instance().clear()
    argv = sys.argv
    sys.argv = [f"{script_name}.py", *args]
    try:
        script.run() if hasattr(script, "run") else script.main()
    finally:
        sys.argv = argv
        GlobalHydra.instance().clear()
