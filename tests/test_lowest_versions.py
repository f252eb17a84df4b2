"""The lowest torch, torchvision and Lightning pyproject.toml allows run genmodels: installed
into a virtual environment of their own (everything else shared with this one), they pass
the Lightning-private checks and the GAN tests, and train and resume real (tiny) runs.
Slow: it installs (torch with its CUDA libraries: a few GB downloaded, about 2 minutes)."""

import re
import subprocess
import sys

import pytest

from .conftest import ROOT

# The floors installed together, each with the distributions that must share its version.
PACKAGES = {"torch": ["torch"], "torchvision": ["torchvision"],
            "lightning": ["lightning", "pytorch-lightning"]}

SMOKE_TESTS = [
    "tests/test_lightning_private.py",
    "tests/test_layers.py",
    "tests/test_gans.py",  # the GAN's gradient norm: torch.nn.utils.get_total_norm (torch 2.6)
    "tests/test_resume.py::test_resumed_run_ends_with_the_same_weights_as_an_uninterrupted_one",
    "tests/test_divergence.py::test_every_family_stops_on_nan_and_keeps_its_last_good_checkpoint",
    "tests/test_fused_batches.py::test_fused_batches_train_exactly_as_one_batch_per_step",
]


def lowest_allowed(package: str) -> str:
    """The floor `package>=X` in pyproject.toml's dependencies ("torch" does not match
    "torchvision")."""
    pyproject = (ROOT / "pyproject.toml").read_text()
    return re.search(rf'^\s*"{re.escape(package)}>=([\w.]+)', pyproject,
                     re.MULTILINE).group(1)


def release(version: str, parts: int) -> list[str]:
    """The first `parts` numbers of a version, without a local label: "2.6.0+cu124" -> 2, 6."""
    return version.split("+")[0].split(".")[:parts]


@pytest.mark.slow
def test_the_lowest_allowed_torch_and_lightning_pass_a_smoke_subset(tmp_path):
    floors = {package: lowest_allowed(package) for package in PACKAGES}
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)],
                   check=True)
    python = str(venv / "bin" / "python")
    # `==2.6` is 2.6.0; registry wheels only (no +cpu): torchvision needs the matching torch.
    pins = [f"{name}=={floors[package]}" for package, names in PACKAGES.items()
            for name in names]
    install = subprocess.run([python, "-m", "pip", "install", "--quiet", *pins],
                             capture_output=True, text=True)
    assert install.returncode == 0, install.stderr[-2000:]

    # The venv imports the floors, and genmodels from this checkout.
    report = ("import torch, torchvision, lightning, genmodels; print(torch.__version__, "
              "torchvision.__version__, lightning.__version__, genmodels.__file__)")
    *versions, package_file = subprocess.run(
        [python, "-c", report], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.split()
    for (package, floor), installed in zip(floors.items(), versions, strict=True):
        assert release(installed, floor.count(".") + 1) == floor.split("."), (package, installed)
    assert package_file == str(ROOT / "genmodels" / "__init__.py")

    smoke = subprocess.run([python, "-m", "pytest", "-q", "-n", "0", "-p", "no:cacheprovider",
                            *SMOKE_TESTS], cwd=ROOT, capture_output=True, text=True)
    assert smoke.returncode == 0, f"{pins}:\n" + smoke.stdout[-4000:]
