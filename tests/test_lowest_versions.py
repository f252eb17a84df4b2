"""The lowest Lightning pyproject.toml allows runs genmodels: installed into a virtual
environment of its own (torch and everything else shared with this one), it passes the
Lightning-private checks and trains and resumes real (tiny) runs. Slow: it installs."""

import re
import subprocess
import sys

import pytest

from .conftest import ROOT


def lowest_allowed(package: str) -> str:
    """The floor `package>=X` in pyproject.toml's dependencies."""
    pyproject = (ROOT / "pyproject.toml").read_text()
    return re.search(rf'^\s*"{package}>=([\w.]+)', pyproject, re.MULTILINE).group(1)


@pytest.mark.slow
def test_the_lowest_allowed_lightning_passes_a_smoke_subset(tmp_path):
    version = lowest_allowed("lightning")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)],
                   check=True)
    python = str(venv / "bin" / "python")
    install = subprocess.run([python, "-m", "pip", "install", "--quiet",
                              f"lightning=={version}", f"pytorch-lightning=={version}"],
                             capture_output=True, text=True)
    assert install.returncode == 0, install.stderr[-2000:]
    installed = subprocess.run([python, "-c", "import lightning; print(lightning.__version__)"],
                               capture_output=True, text=True, check=True).stdout.strip()
    assert installed.split(".")[: version.count(".") + 1] == version.split(".")
    smoke = subprocess.run(
        [python, "-m", "pytest", "-q", "-n", "0", "-p", "no:cacheprovider",
         "tests/test_lightning_private.py", "tests/test_layers.py",
         "tests/test_resume.py::test_resumed_run_ends_with_the_same_weights_as_an_uninterrupted_one",
         "tests/test_divergence.py::test_every_family_stops_on_nan_and_keeps_its_last_good_checkpoint",
         "tests/test_fused_batches.py::test_fused_batches_train_exactly_as_one_batch_per_step"],
        cwd=ROOT, capture_output=True, text=True)
    assert smoke.returncode == 0, f"Lightning {version}:\n" + smoke.stdout[-4000:]
