"""Every command printed in README.md and docs/*.md runs as printed (issue 27).

The commands are taken from the Markdown's fenced shell blocks (```bash, ```sh or plain
```; not ```python): `python train.py`, `python generate.py`, `python evaluate.py` and
`python -m genmodels...` lines, with `\\` continuations joined and trailing `# comments`
dropped. Each runs in its own temporary directory (so `logs/`, `data/` and any `out=`
land there, never in the repository), in its smallest form (SHORTEN below), with the
placeholders of the docs (`<vae run>`, `logs/runs/<run>`, `a.png`, ...) replaced by tiny
runs and images this module makes (SUBSTITUTIONS below). Each must exit 0, or, when it
needs what this offline, CPU-only machine lacks (MISSING below: a dataset download, a GPU,
a package), fail in one sentence: exit 1, its last stderr line `Error: ...`, no traceback.

Left out: `pip`, `tensorboard`, `python -c`, `python -m venv`, `python -m pytest` and the
`python benchmarks/...` lines (they take minutes; tests/test_bench.py covers the
benchmarks' code paths).
"""

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from genmodels.jobs.train import train

from .conftest import ROOT, SMALL_DCGAN, TINY, compose_config

pytestmark = pytest.mark.slow

DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
KEEP = ("python train.py", "python generate.py", "python evaluate.py", "python -m genmodels")
SHELL_FENCES = {"", "bash", "sh", "shell", "console"}

# Placeholders of the docs -> what stands in for them, relative to each command's own
# directory. Longest first, so `logs/runs/<run>/checkpoints/...` wins over `<run>`.
# The runs (logs/runs/vae, ...) are tiny ones trained once by the `runs` fixture and
# copied into each command's directory (generate.py writes beside them, resume= continues
# them: no command sees another's files).
SUBSTITUTIONS = {
    "logs/runs/<run>/checkpoints/epoch_009.ckpt": "logs/runs/vae/checkpoints/last.ckpt",
    "logs/runs/2026-11-21_18-31-19_vae_digits": "logs/runs/vae",  # resume= examples
    "logs/runs/<run>": "logs/runs/vae",
    "<pt_inception-2015-12-05 .pth file>": "pt_inception-2015-12-05.pth",  # absent here
    "<ae or vae run>": "logs/runs/vae",
    "<ae run>": "logs/runs/vae",  # any model with encode()
    "<celeba vae run>": "logs/runs/vae",  # digits have no attributes: see MISSING
    "<2-d vae run>": "logs/runs/vae2d",
    "<conditional run>": "logs/runs/cgan",
    "<cgan run>": "logs/runs/cgan",
    "logs/runs/<ddpm run>": "logs/runs/ddpm",
    "<conditional ddpm run>": "logs/runs/cddpm",
    "<ddpm run>": "logs/runs/ddpm",
    "<stylegan run>": "logs/runs/stylegan",
    "<vae run>": "logs/runs/vae",
    "<gan run>": "logs/runs/dcgan",
    "<run>": "logs/runs/vae",
    "~/my_photos": "my_photos",  # a folder of a few PNG images
    # a.png, b.png (two digit images) and my_folder (three more) are made in each directory.
}

# A U-Net small enough that 1000 sampling steps take seconds.
TINY_UNET = ["model.network.widths=[8,8]", "model.network.norm_groups=2"]

# The runs behind the placeholders: train.py overrides, on top of conftest's TINY.
RUNS = {
    "vae": ["model=vae", "callbacks=best"],  # best.ckpt for the ckpt=... examples
    "vae2d": ["model=vae", "model.latent_dim=2"],
    "dcgan": ["model=dcgan", *SMALL_DCGAN],
    "cgan": ["model=cgan"],
    "stylegan": ["model=stylegan", "model.generator.max_width=32", "dataset.batch_size=8"],
    "ddpm": ["model=ddpm", *TINY_UNET],
    "cddpm": ["model=ddpm", *TINY_UNET, "model.num_classes=10"],
}

# What a command needs that this machine lacks (a substring of the command as printed,
# why): such a command must fail in one sentence instead of running.
MISSING = {
    "dataset=mnist": "downloads MNIST",
    "dataset=fashion": "downloads Fashion-MNIST",
    "dataset=cifar10": "downloads CIFAR-10",
    "dataset=celeba": "downloads CelebA",
    "experiment=vae_fashion": "downloads Fashion-MNIST",
    "experiment=dcgan_fashion": "downloads Fashion-MNIST",
    "experiment=ddpm_mnist": "downloads MNIST",
    "dataset.images=data/MNIST/raw/": "needs the MNIST files torchvision downloads",
    "<celeba vae run>": "needs a CelebA run (a download): digits have no attributes",
    "trainer=gpu": "needs a GPU",
    "trainer=ddp": "needs GPUs",
    "logger=wandb": "needs wandb",
    "logger=mlflow": "needs mlflow",
    "inception_weights=": "needs torch-fidelity and the Inception weights file",
    "hydra/launcher=slurm": "needs a SLURM cluster (srun)",
}

# The smallest form of each command: these keys replace the command's own values, or are
# added (trainer=debug is added too where a command picks no trainer).
SHORT_TRAINING = {"trainer.max_epochs": "1", "trainer.limit_train_batches": "2",
                  "trainer.limit_val_batches": "1", "trainer.limit_test_batches": "1",
                  "trainer.max_steps": "-1", "trainer.enable_progress_bar": "false"}
SHORT_SEARCH = {"hydra.sweeper.n_trials": "2", "hydra.sweeper.sampler.n_startup_trials": "1"}
SHORT_PRETRAIN = {"pretrain.classifier_epochs": "1", "pretrain.val_every_n_epochs": "1"}
SHORT_JOBS = {"hydra.sweeper.n_jobs": "2", "hydra.launcher.n_jobs": "2"}  # where set
SHORT_GENERATE = {"num": "16"}  # samples and reconstructions
SHORT_EVALUATE = {"num_samples": "200", "nll_samples": "10", "classifier_epochs": "1",
                  "batch_size": "100"}


def strip_comment(line: str) -> str:
    """The line without a trailing `# comment` (a `#` inside quotes is not one)."""
    quote = None
    for i, char in enumerate(line):
        if quote:
            quote = None if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char == "#" and (i == 0 or line[i - 1].isspace()):
            return line[:i].rstrip()
    return line.rstrip()


def extract_commands(path: Path) -> list[tuple[str, int, str]]:
    """(file, line, command) of each command of KEEP in the file's shell code blocks."""
    commands, fence, lang, pending, start = [], None, "", None, 0
    for number, line in enumerate(path.read_text().splitlines(), 1):
        stripped = line.strip()
        opening = re.match(r"(`{3,}|~{3,})\s*([\w+-]*)", stripped)
        if fence is None:  # outside a block: only a fence matters
            if opening:
                fence, lang = opening.group(1), opening.group(2).lower()
            continue
        if stripped.startswith(fence) and not stripped.strip(fence[0]):
            fence, pending = None, None  # the block's closing fence
            continue
        if lang not in SHELL_FENCES:
            continue
        if pending is None:
            pending, start = "", number
            stripped = stripped.removeprefix("$ ")
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        command, pending = strip_comment(pending + stripped), None
        for part in command.split("&&"):  # `pip install ... && python train.py`
            part = " ".join(part.split())
            if part.startswith(KEEP):
                commands.append((path.relative_to(ROOT).as_posix(), start, part))
    assert fence is None, f"{path.name}: a code block is never closed"
    return commands


COMMANDS = [command for path in DOCS for command in extract_commands(path)]


def test_the_docs_have_commands():
    assert len(COMMANDS) > 40  # the extraction found the docs' commands
    assert all(not command.startswith("python benchmarks") for _, _, command in COMMANDS)


def substitute(command: str) -> str:
    for placeholder in sorted(SUBSTITUTIONS, key=len, reverse=True):
        command = command.replace(placeholder, SUBSTITUTIONS[placeholder])
    return command


def shorten(args: list[str], values: dict[str, str], add: bool = True) -> list[str]:
    """args with each key of values set to its value: in place, else appended (if add)."""
    values = dict(values)
    shortened = []
    for arg in args:
        key = arg.split("=", 1)[0].lstrip("+")
        shortened.append(f"{key}={values.pop(key)}" if key in values and "=" in arg else arg)
    return shortened + ([f"{key}={value}" for key, value in values.items()] if add else [])


def smallest_form(command: str) -> list[str]:
    """The argv of the command as run here: short training, few samples."""
    args = shlex.split(substitute(command))
    assert args[0] == "python"
    if args[1] == "-m":  # genmodels.jobs.likelihood: 10 samples of 50 images
        args = [arg if arg != "1000" else "10" for arg in args]
        return [sys.executable, *args[1:], "--limit", "50"]
    script, args = args[1], args[2:]
    if "--help" in args:
        pass
    elif script == "train.py" and "resume=" in command:  # one more epoch of the tiny run
        args = shorten(args, {"extra_epochs": "1"} if "extra_epochs=" in command
                       else {"trainer.max_epochs": "2"})
    elif script == "train.py":
        if not any(arg.startswith("trainer=") for arg in args):
            args.append("trainer=debug")
        args = shorten(args, SHORT_TRAINING)
        args = shorten(args, SHORT_JOBS, add=False)
        if "hparams_search=" in command:
            args = shorten(args, SHORT_SEARCH)
        if "experiment=pretrain_classifier" in command:
            args = shorten(args, SHORT_PRETRAIN)
    elif script == "generate.py":
        args = shorten(args, SHORT_GENERATE if "task=" not in command else {})
    elif script == "evaluate.py":
        args = shorten(args, SHORT_EVALUATE)
    return [sys.executable, str(ROOT / script), *args]


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Path:
    """The tiny runs of RUNS, trained once, in <dir>/logs/runs/<name>."""
    root = tmp_path_factory.mktemp("doc_runs")
    for name, overrides in RUNS.items():
        train(compose_config([*overrides, *TINY, "trainer.max_epochs=1"],
                             root / "logs" / "runs" / name))
    return root


def write_images(folder: Path, count: int, offset: int = 0) -> list[Path]:
    from PIL import Image
    from sklearn.datasets import load_digits

    folder.mkdir(parents=True, exist_ok=True)
    digits = load_digits().images[offset:offset + count]
    paths = []
    for i, digit in enumerate(digits):
        paths.append(folder / f"{offset + i}.png")
        Image.fromarray((digit * 255 / 16).astype("uint8")).resize((28, 28)).save(paths[-1])
    return paths


@pytest.mark.parametrize("source,line,command", COMMANDS,
                         ids=[f"{source}:{line}" for source, line, _ in COMMANDS])
def test_doc_command_runs(source, line, command, runs, tmp_path):
    shutil.copytree(runs / "logs", tmp_path / "logs")
    for name, image in zip(("a.png", "b.png"), write_images(tmp_path / "pair", 2), strict=True):
        image.rename(tmp_path / name)
    write_images(tmp_path / "my_folder", 3, offset=2)
    write_images(tmp_path / "my_photos", 20, offset=5)
    argv = smallest_form(command)
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "HOME": str(tmp_path / "home"),
           "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    result = subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True,
                            timeout=600)
    where = f"{source}:{line}: {command}\nran: {shlex.join(argv[1:])}\n"
    missing = [why for marker, why in MISSING.items() if marker in command]
    if missing:
        last = (result.stderr.strip().splitlines() or [""])[-1]
        assert result.returncode == 1 and last.startswith("Error:"), (
            f"{where}expected one sentence ({missing[0]}), got exit {result.returncode}:\n"
            f"{result.stderr[-3000:]}")
        assert "Traceback" not in result.stdout + result.stderr, where + result.stderr
    else:
        assert result.returncode == 0, (f"{where}exit {result.returncode}:\n"
                                        f"{result.stdout[-2000:]}\n{result.stderr[-4000:]}")
