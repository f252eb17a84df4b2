"""Every model config of the catalogue on one budget, one split, scored one way: the table
of docs/results.md#every-config-at-one-budget, from which a user picks a model.

Each config trains with train.py for the same wall time (`--minutes`) on the first 8,000
images of the MNIST test set (the split of benchmarks/compare_keras.py), one after the
other so that each has the machine to itself; then `evaluate.py` scores 2,000 samples
against the last 2,000 images in its classifier's features (one classifier for all):
Frechet distance, precision, recall, classes present, plus the reconstruction error of
the held-out images (models that reconstruct), the -ELBO and the importance-sampled NLL
in nats per image (VAEs).

    # the page's table (25 configs: some 5 hours at 10 minutes each, alone on the machine):
    python benchmarks/catalogue.py --mnist-dir data/MNIST/raw --minutes 10
    # some configs only, into the same folder (a finished run or score is kept, so an
    # interrupted command goes on where it stopped):
    python benchmarks/catalogue.py --mnist-dir data/MNIST/raw --minutes 10 --configs vae dcgan

The table goes into docs/results.md between its catalogue markers (`--page` another file,
`--page none` only <out>/catalogue.md), with the command, the date and the machine.
"""

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from compare_keras import (  # noqa: E402
    HELD_OUT,
    SAMPLES,
    SHARED,
    mnist_files,
    run_overrides,
    wall_time_overrides,
)

ROOT = Path(__file__).resolve().parents[1]

# name -> (family, train.py overrides): every conf/model/*.yaml as it ships (on the data's
# default batch size of 128 where the model sets none), and the experiment presets that
# train on digits (their own batch sizes and options). tests/test_bench.py checks that
# every model config is here or in SKIPPED.
CATALOGUE = {
    "linear_ae": ("autoencoder", ["model=linear_ae"]),
    "ae": ("autoencoder", ["model=ae"]),
    "tied_ae": ("autoencoder", ["model=tied_ae"]),
    "greedy_ae": ("autoencoder", ["model=greedy_ae"]),
    "sparse_ae": ("autoencoder", ["model=sparse_ae"]),
    "denoising_ae": ("autoencoder", ["model=denoising_ae"]),
    "conv_ae": ("autoencoder", ["model=conv_ae"]),
    "recurrent_ae": ("autoencoder", ["model=recurrent_ae"]),
    "vae": ("vae", ["model=vae"]),
    "experiment=vae_fashion": ("vae", ["experiment=vae_fashion"]),
    "vae_mnist_500": ("vae", ["model=vae_mnist_500"]),
    "beta_vae": ("vae", ["model=beta_vae"]),
    "conv_vae": ("vae", ["model=conv_vae"]),
    "conv_vae_bn": ("vae", ["model=conv_vae_bn"]),
    "faces_vae": ("vae", ["model=faces_vae"]),
    "gan": ("gan", ["model=gan"]),
    "gan_upsample": ("gan", ["model=gan_upsample"]),
    "dcgan": ("gan", ["model=dcgan"]),
    "experiment=dcgan_fashion": ("gan", ["experiment=dcgan_fashion"]),
    "cgan": ("gan", ["model=cgan"]),
    "wgan_gp": ("gan", ["model=wgan_gp"]),
    "stylegan": ("gan", ["model=stylegan"]),
    "ddpm": ("diffusion", ["model=ddpm"]),
    "experiment=ddpm_mnist": ("diffusion", ["experiment=ddpm_mnist"]),
}
SKIPPED = {"dcgan64": "built for 64x64 images: its four stride-2 layers need a size "
                      "divisible by 16, not MNIST's 28",
           "progan": "its growth fits the resolution phases to the run's length in epochs or "
                     "steps (or model.growth.fade_images and stable_images), which a budget "
                     "of wall time does not give"}
FAMILIES = {"autoencoder": "Autoencoders", "vae": "Variational autoencoders", "gan": "GANs",
            "diffusion": "Diffusion"}
START, END = "<!-- catalogue: start -->", "<!-- catalogue: end -->"


def slug(name: str) -> str:
    return name.replace("experiment=", "experiment-")


def train_overrides(name: str, args, run_dir: Path) -> list[str]:
    """train.py overrides of one config: the split, `--minutes` of training, no image
    grids or validation (the budget goes to training), a CSV log, the last checkpoint."""
    return [*CATALOGUE[name][1],
            *run_overrides(args.images, args.labels, args.accelerator, args.seed, run_dir),
            *wall_time_overrides(args.minutes), "trainer.max_steps=-1"]


SETTINGS = ("minutes", "seed", "accelerator", "nll_samples")


def check_settings(args) -> None:
    """One --out folder holds runs of one budget: its first command's settings are kept in
    settings.json, and a command with others is refused (its rows would not compare)."""
    path = Path(args.out) / "settings.json"
    settings = {key: getattr(args, key) for key in SETTINGS}
    if path.is_file():
        kept = json.loads(path.read_text())
        changed = [key for key in SETTINGS if kept.get(key) != settings[key]]
        if changed:
            sys.exit(f"Error: {args.out} holds runs made with "
                     + ", ".join(f"--{k.replace('_', '-')} {kept.get(k)}" for k in changed)
                     + "; give the same, or another --out for "
                     + ", ".join(f"--{k.replace('_', '-')} {settings[k]}" for k in changed) + ".")
    else:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(settings) + "\n")
    args.command = (f"python benchmarks/catalogue.py --minutes {args.minutes:g}"
                    + (f" --seed {args.seed}" if args.seed else "")
                    + (f" --accelerator {args.accelerator}" if args.accelerator != "cpu" else "")
                    + (f" --nll-samples {args.nll_samples}" if args.nll_samples != 10 else ""))


def run_config(name: str, args) -> str | None:
    """Train (unless its run finished before) and score (unless scored before) one config;
    returns what failed, if anything."""
    out = Path(args.out)
    run_dir, score_file = out / "runs" / slug(name), out / "scores" / f"{slug(name)}.json"
    log = out / "logs" / f"{slug(name)}.log"
    env = os.environ | {"PYTHONUNBUFFERED": "1"}
    if not (run_dir / "checkpoints" / "last.ckpt").is_file():
        if run_dir.exists():  # an earlier attempt stopped before its end: train anew
            print(f"{name}: {run_dir} has no last.ckpt (interrupted): training it again")
            shutil.rmtree(run_dir)
        started = time.perf_counter()
        with open(log, "w") as stream:
            code = subprocess.run([sys.executable, str(ROOT / "train.py"),
                                   *train_overrides(name, args, run_dir)],
                                  stdout=stream, stderr=subprocess.STDOUT, env=env,
                                  cwd=ROOT).returncode
        if code:
            return f"training failed (exit {code}), see {log}"
        print(f"{name}: trained in {time.perf_counter() - started:.0f} s", flush=True)
    if not score_file.is_file():
        started = time.perf_counter()
        with open(log, "a") as stream:
            code = subprocess.run([sys.executable, str(ROOT / "evaluate.py"), f"run={run_dir}",
                                   f"num_samples={SAMPLES}", f"nll_samples={args.nll_samples}",
                                   f"classifier_cache={out / 'classifiers'}",
                                   f"device={args.device}", f"out={score_file}"],
                                  stdout=stream, stderr=subprocess.STDOUT, env=env,
                                  cwd=ROOT).returncode
        if code:
            return f"scoring failed (exit {code}), see {log}"
        print(f"{name}: scored in {time.perf_counter() - started:.0f} s", flush=True)
    return None


def row_of(name: str, out: Path) -> dict:
    scores = json.loads((out / "scores" / f"{slug(name)}.json").read_text())
    config = yaml.safe_load((out / "runs" / slug(name) / "config.yaml").read_text())
    return {"name": name, "family": CATALOGUE[name][0], "epochs": scores["epoch"],
            "batch_size": config["dataset"]["batch_size"],
            "sample_seconds": scores["sample_seconds"], **scores["metrics"]}


def cell(row: dict, key: str, form: str) -> str:
    return "" if row.get(key) is None else format(row[key], form)


def seconds(value: float) -> str:
    return f"{value:.1f} s" if value >= 1 else f"{value:.2f} s"


def table(rows: list[dict], failed: dict[str, str], args) -> str:
    """The Markdown of the page: what made it, then one table per family."""
    import torch

    machine = (f"{torch.cuda.get_device_name()}" if args.device != "cpu"
               and torch.cuda.is_available() else f"{os.cpu_count()} CPU cores")
    lines = [f"`{args.command}`, {date.today().isoformat()}, {machine}, "
             f"{platform.machine()}, torch {torch.__version__}: {args.minutes:g} minutes of "
             f"training each (seed {args.seed}), {SAMPLES:,} samples scored against the "
             f"{HELD_OUT:,} held-out images.", ""]
    for family, title in FAMILIES.items():
        family_rows = [r for r in rows if r.get("family") == family]
        if not family_rows:
            continue
        lines += [f"**{title}**", "",
                  "| config | batch | epochs | FD | precision | recall | classes | -ELBO | NLL | "
                  "reconstruction MSE | sampling 2,000 |", "|---" * 11 + "|"]
        for row in family_rows:
            name = f"`{row['name']}`" if "=" in row["name"] else f"`model={row['name']}`"
            lines.append(
                f"| {name} | {row['batch_size']} | {row['epochs']} "
                f"| {cell(row, 'fd_classifier', '.1f')} "
                f"| {cell(row, 'precision', '.2f')} | {cell(row, 'recall', '.2f')} "
                f"| {cell(row, 'modes_covered', '.0f')} "
                f"| {cell(row, 'neg_elbo', '.1f')} | {cell(row, 'nll_importance_sampled', '.1f')} "
                f"| {cell(row, 'reconstruction_mse', '.4f')} "
                f"| {seconds(row['sample_seconds'])} |")
        lines.append("")
    lines += [f"Not measured: `{name}`: {why}." for name, why in failed.items()]
    lines += [f"Not in the table: `model={name}`, {why}." for name, why in SKIPPED.items()]
    return "\n".join(lines).rstrip() + "\n"


def write_page(page: Path, text: str) -> None:
    """Put `text` between the page's catalogue markers (the rest of the page is kept)."""
    content = page.read_text()
    if START not in content or END not in content:
        sys.exit(f"Error: {page} has no catalogue markers ({START} ... {END}); add them "
                 "where the table goes, or give --page none.")
    head, rest = content.split(START, 1)
    page.write_text(f"{head}{START}\n{text}{END}{rest.split(END, 1)[1]}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=10,
                        help="training wall time of each config")
    parser.add_argument("--configs", nargs="*", default=None, help="default: all")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="catalogue", help="runs, scores, logs")
    parser.add_argument("--page", default=str(ROOT / "docs" / "results.md"),
                        help="Markdown file with catalogue markers, or none")
    parser.add_argument("--nll-samples", type=int, default=10,
                        help="importance samples per image of the VAEs' NLL")
    parser.add_argument("--accelerator", default="cpu", help="training: cpu, gpu or auto")
    parser.add_argument("--device", default="cpu", help="scoring: cpu, cuda or auto")
    parser.add_argument("--mnist-dir", type=Path, default=None,
                        help="as for compare_keras.py (default ../shared/data/mnist-t10k)")
    args = parser.parse_args(argv)
    unknown = sorted(set(args.configs or []) - set(CATALOGUE))
    if unknown:
        parser.error(f"no config {unknown[0]!r} in the catalogue; valid choices: "
                     f"{', '.join(CATALOGUE)}")
    if args.minutes <= 0:
        parser.error(f"--minutes must be positive, got {args.minutes:g}")
    files = mnist_files(args.mnist_dir, {"images": None, "labels": None}, SHARED)
    args.images, args.labels = str(files["images"]), str(files["labels"])
    check_settings(args)
    for folder in ("runs", "scores", "logs"):
        (Path(args.out) / folder).mkdir(parents=True, exist_ok=True)
    failed = {name: run_config(name, args) for name in args.configs or CATALOGUE}
    failed = {name: why for name, why in failed.items() if why}
    # The table: every config scored in --out so far (all on the same settings).
    out = Path(args.out)
    rows = [row_of(name, out) for name in CATALOGUE
            if (out / "scores" / f"{slug(name)}.json").is_file()]
    text = table(rows, failed, args)
    (Path(args.out) / "catalogue.md").write_text(text)
    (Path(args.out) / "catalogue.json").write_text(json.dumps(rows, indent=1) + "\n")
    if args.page != "none":
        write_page(Path(args.page), text)
    print(text)
    if failed:
        sys.exit(f"{len(failed)} of the configs failed: {', '.join(failed)}")


if __name__ == "__main__":
    main()
