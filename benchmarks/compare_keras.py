"""genmodels against the seed text's own Keras code (Geron, ch. 17): sample quality of the
DCGAN and the dense VAE at equal epochs, on the same data, several seeds a side.

Data: the first 8,000 images of the MNIST test set (IDX files, in `--mnist-dir` or given
as `--images`/`--labels`) train both sides; the last 2,000 are the held-out reference.
Samples (2,000 per run, as uint8 .npz) are scored with evaluate.py's classifier features
(`fd_classifier`, precision/recall, modes, KL to the real classes), the classifier trained
on the 8,000 training images; the VAE also reports its -ELBO on the held-out images.

    # our side (the framework's train(), with its checkpoints after epochs 10 and 20):
    python benchmarks/compare_keras.py ours --mnist-dir data/MNIST/raw --recipe dcgan --out cmp
    python benchmarks/compare_keras.py ours --mnist-dir data/MNIST/raw --recipe vae --out cmp
    # Keras (TensorFlow in its own virtualenv; genmodels does not depend on it):
    python benchmarks/compare_keras.py keras --mnist-dir data/MNIST/raw \\
        --python /tmp/tfenv/bin/python --recipe dcgan --seeds 0 1 2 --out cmp
    # scores and the table (means and sample standard deviations over seeds), as JSON too:
    python benchmarks/compare_keras.py score --mnist-dir data/MNIST/raw --out cmp

`ours` takes `--accelerator cpu|gpu` and extra config overrides (`--override k=v ...`);
each run's samples go to `<out>/<side>/<tag>_seed<S>_epoch<E>.npz` (the tag is the recipe
unless `--tag` names a variant; `_min<M>.npz` with `--minutes M`: training for M minutes
of wall time, as `--recipe ddpm` against `--recipe dcgan-default` at equal time;
`_step<N>.npz` with `--steps N`), so runs made on
different machines can be copied into one folder and scored together.
"""

import argparse
import gzip
import json
import math
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# Our side of each recipe. "dcgan-default" and "vae-default" are `model=dcgan` and
# `model=vae` as they ship, at the book's batch sizes.
RECIPES = {"dcgan": ["experiment=dcgan_fashion"], "vae": ["experiment=vae_fashion"],
           "dcgan-default": ["model=dcgan", "dataset.batch_size=32"],
           "vae-default": ["model=vae", "dataset.batch_size=128"],
           "ddpm": ["experiment=ddpm_mnist"]}
TRAIN, HELD_OUT, SAMPLES = 8000, 2000, 2000

# The official MNIST test set (10,000 images), as torchvision's MNIST downloads it into
# <data_dir>/MNIST/raw/ (`python train.py dataset=mnist`).
MNIST_FILES = {"images": "t10k-images-idx3-ubyte", "labels": "t10k-labels-idx1-ubyte"}
SHARED = ROOT.parent / "shared" / "data" / "mnist-t10k"  # the default, where it exists


def mnist_files(folder: Path | None, given: dict[str, Path | None],
                default: Path) -> dict[str, Path]:
    """The IDX files: each as given (--images, --labels), else found, gzipped or not, in
    --mnist-dir (else `default`, where it exists) or its MNIST/raw/. Missing: exits with
    one sentence saying where they come from. seed_claims.py uses it too."""
    folder = folder if folder is not None else default if default.is_dir() else None
    where = [folder, folder / "MNIST" / "raw"] if folder is not None else []
    files = {kind: Path(path).expanduser() if path else next(
        (d / (MNIST_FILES[kind] + gz) for d in where for gz in (".gz", "")
         if (d / (MNIST_FILES[kind] + gz)).is_file()), None) for kind, path in given.items()}
    missing = [str(files[k]) for k in files if files[k] is not None and not files[k].is_file()]
    if missing or None in files.values():
        said = (f"{', '.join(missing)} does not exist" if missing
                else f"{folder} holds no MNIST test files" if folder is not None
                else "No MNIST folder given (--mnist-dir)")
        names = " and ".join(f"{MNIST_FILES[kind]}.gz" for kind in given)
        sys.exit(f"Error: {said}: give --mnist-dir <folder> with the official MNIST test set "
                 f"file{'s' * (len(given) > 1)} {names} (gzipped or not), e.g. data/MNIST/raw, "
                 "where torchvision's MNIST downloads them (python train.py dataset=mnist).")
    return files


def read_idx(path: Path) -> np.ndarray:
    with gzip.open(path, "rb") if str(path).endswith(".gz") else open(path, "rb") as f:
        data = f.read()
    dims = data[3]
    shape = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(dims)]
    return np.frombuffer(data, np.uint8, offset=4 + 4 * dims).reshape(shape)


def run_overrides(images: str, labels: str, accelerator: str, seed: int,
                  run_dir: Path) -> list[str]:
    """train.py overrides of every benchmark run: train on the first TRAIN images of the
    IDX files, hold out the last HELD_OUT as the test split (evaluate.py's reference), no
    validation, no progress bar or image grids, a CSV log, no test pass."""
    return ["dataset=idx", f"dataset.images={images}", f"dataset.labels={labels}",
            "dataset.ordered_split=true", f"dataset.test_fraction={HELD_OUT / (TRAIN + HELD_OUT)}",
            "dataset.val_fraction=0", "trainer.limit_val_batches=0",
            f"trainer.accelerator={accelerator}", "trainer.enable_progress_bar=false",
            "callbacks.image_grids=null", "logger=csv", "test=false", f"seed={seed}",
            f"hydra.run.dir={run_dir}"]


def wall_time_overrides(minutes: float) -> list[str]:
    """Training for `minutes` of wall time (Lightning's DD:HH:MM:SS), however many epochs."""
    seconds = round(minutes * 60)
    return [f"trainer.max_time=00:{seconds // 3600:02d}:{seconds // 60 % 60:02d}:"
            f"{seconds % 60:02d}", "trainer.max_epochs=-1"]


def our_overrides(args, recipe: str, seed: int, run_dir: Path) -> list[str]:
    """The recipe on the first TRAIN images; checkpoints after every 10th epoch, or
    (--minutes) training for that much wall time, or (--steps) that many steps."""
    budget = (wall_time_overrides(args.minutes) if args.minutes else
              [f"trainer.max_steps={args.steps}", "trainer.max_epochs=-1"] if args.steps else
              [f"trainer.max_epochs={max(args.epochs)}",
               f"callbacks.periodic_checkpoint.every_n_epochs={math.gcd(*args.epochs)}"])
    return [*RECIPES[recipe],
            *run_overrides(args.images, args.labels, args.accelerator, seed, run_dir),
            *budget, *args.override]


def ours(args) -> None:
    """Train our side with train.py (a subprocess per seed) and sample its checkpoints."""
    from genmodels.engine.runs import load_model
    from genmodels.metrics.likelihood import negative_elbo
    from genmodels.sampling import DIFFUSION_OPTIONS, sample_images

    out = Path(args.out) / "ours"
    out.mkdir(parents=True, exist_ok=True)
    images = read_idx(Path(args.images))
    held_out = torch.from_numpy(images[-HELD_OUT:].copy())[:, None]
    for seed in args.seeds:
        run_dir = Path(args.runs_dir or out / "runs") / f"{args.tag}_seed{seed}"
        if not (run_dir / "checkpoints").exists():
            command = [sys.executable, str(ROOT / "train.py"),
                       *our_overrides(args, args.recipe, seed, run_dir)]
            print(" ".join(command), flush=True)
            started = time.perf_counter()
            subprocess.run(command, check=True, cwd=ROOT)
            print(f"trained in {time.perf_counter() - started:.0f} s", flush=True)
        budgets = ({f"min{args.minutes}": "last.ckpt"} if args.minutes else
                   {f"step{args.steps}": "last.ckpt"} if args.steps else
                   {f"epoch{epoch}": f"epoch_{epoch - 1:03d}.ckpt" for epoch in args.epochs})
        for budget, checkpoint in budgets.items():
            model = load_model(run_dir / "checkpoints" / checkpoint)
            if args.accelerator != "cpu" and torch.cuda.is_available():
                model.cuda()  # sample where it trained
            # --sample-option: a DDPM's sample_steps, sampler, eta or guidance, or else a
            # model attribute (clip_x0=false)
            options = {name: yaml.safe_load(value) for name, value in
                       (option.split("=", 1) for option in args.sample_option)}
            diffusion = {name: options.pop(name) for name in DIFFUSION_OPTIONS
                         if name in options} or None
            for name, value in options.items():
                setattr(model, name, value)
            # A GAN with an EMA copy of G: samples of the live G (the recipe as trained)
            # and of the EMA copy (side ours_ema): EMA does not change the training.
            emas = [False, True] if getattr(model, "generator_ema", None) is not None else [None]
            for ema in emas:
                started = time.perf_counter()
                images = sample_images(model, SAMPLES, seed=1000 + seed, ema=ema,
                                       diffusion=diffusion)
                saved = {"images": images[:, 0].numpy(),
                         "sample_seconds": time.perf_counter() - started}
                if args.recipe.startswith("vae"):
                    x = held_out.float().to(model.device) / 255  # the VAE's [0, 1] range
                    saved["neg_elbo"] = negative_elbo(model, x)
                side = out.parent / ("ours_ema" if ema else "ours")
                side.mkdir(exist_ok=True)
                np.savez_compressed(side / f"{args.tag}_seed{seed}_{budget}.npz", **saved)
            print(f"ours {args.tag} seed {seed} {budget}: samples saved", flush=True)


def keras(args) -> None:
    """The book's Keras code, one subprocess per seed, in TensorFlow's own virtualenv."""
    if args.recipe not in ("dcgan", "vae"):
        sys.exit(f"keras: the book has code for --recipe dcgan and vae, not {args.recipe!r}.")
    for seed in args.seeds:
        subprocess.run([args.python, str(ROOT / "benchmarks" / "keras_book.py"), args.recipe,
                        "--images", str(args.images), "--seed", str(seed),
                        "--threads", str(args.threads), "--epochs", *map(str, args.epochs),
                        "--out", str(Path(args.out) / "keras")], check=True)


def score(args) -> dict:
    """Score every saved sample file against the held-out images; print the table."""
    from genmodels.metrics.classifier import train_classifier
    from genmodels.metrics.sample_quality import classifier_metrics

    images, labels = read_idx(Path(args.images)), read_idx(Path(args.labels))
    as_tensor = lambda a: torch.from_numpy(a.copy())  # noqa: E731
    real, real_labels = as_tensor(images[-HELD_OUT:])[:, None], as_tensor(labels[-HELD_OUT:]).long()
    cached = Path(args.out) / "classifier.pt"
    if cached.exists():
        classifier = torch.load(cached, weights_only=False)
    else:
        classifier = train_classifier(as_tensor(images[:TRAIN])[:, None],
                                      as_tensor(labels[:TRAIN]).long(), 10, seed=0)
        torch.save(classifier, cached)
    rows = []
    for path in sorted(Path(args.out).glob("*/*_seed*_*.npz")):
        recipe, seed, budget = path.stem.split("_")
        data = np.load(path)
        fake = as_tensor(data["images"])[:, None]
        metrics = classifier_metrics(classifier, real, fake, real_labels, seed=0)
        for extra in ("neg_elbo", "sample_seconds"):
            if extra in data:
                metrics[extra] = float(data[extra])
        rows.append({"side": path.parent.name, "recipe": recipe, "seed": int(seed[4:]),
                     "budget": budget, **metrics})
    (Path(args.out) / "scores.json").write_text(json.dumps(rows, indent=1))
    print_table(rows)
    return {"rows": rows}


COLUMNS = ("fd_classifier", "precision", "recall", "modes_covered", "kl_to_real_classes",
           "neg_elbo", "sample_seconds")


def print_table(rows: list[dict]) -> None:
    """Markdown: one line per (recipe, budget, side), mean ± sample std over seeds."""
    columns = [c for c in COLUMNS if any(c in r for r in rows)]
    print("| recipe | budget | side | seeds | " + " | ".join(columns) + " |")
    print("|---" * (4 + len(columns)) + "|")
    keys = sorted({(r["recipe"], r["budget"], r["side"]) for r in rows})
    for recipe, budget, side in keys:
        group = [r for r in rows
                 if (r["recipe"], r["budget"], r["side"]) == (recipe, budget, side)]
        cells = []
        for column in columns:
            values = [r[column] for r in group if column in r]
            if not values:
                cells.append("")
                continue
            spread = statistics.stdev(values) if len(values) > 1 else 0.0
            cells.append(f"{statistics.mean(values):.3g} ± {spread:.2g}")
        print(f"| {recipe} | {budget} | {side} | {len(group)} | " + " | ".join(cells) + " |")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=["ours", "keras", "score"])
    parser.add_argument("--recipe", choices=sorted(RECIPES), default="dcgan")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, nargs="+", default=[10, 20])
    parser.add_argument("--minutes", type=int, default=None,
                        help="ours: train for this much wall time instead, sample last.ckpt")
    parser.add_argument("--steps", type=int, default=None,
                        help="ours: train for this many steps instead, sample last.ckpt")
    parser.add_argument("--tag", default=None,
                        help="ours: the name of the runs and sample files (default: the "
                             "recipe; no '_'), for variants of a recipe (benchmarks/ablation.py)")
    parser.add_argument("--runs-dir", default=None,
                        help="ours: where the training runs go (default <out>/ours/runs)")
    parser.add_argument("--sample-option", nargs="*", default=[],
                        help="ours: model attributes set before sampling, e.g. sample_steps=25")
    parser.add_argument("--out", default="keras_comparison")
    parser.add_argument("--mnist-dir", type=Path, default=None,
                        help="folder of t10k-images-idx3-ubyte.gz and t10k-labels-idx1-ubyte.gz "
                             "(or its MNIST/raw/); default ../shared/data/mnist-t10k if present")
    parser.add_argument("--images", default=None, help="IDX images file (else in --mnist-dir)")
    parser.add_argument("--labels", default=None, help="IDX labels file (else in --mnist-dir)")
    parser.add_argument("--accelerator", default="cpu", help="ours: cpu, gpu or auto")
    parser.add_argument("--override", nargs="*", default=[], help="ours: config overrides")
    parser.add_argument("--python", default="python", help="keras: TensorFlow's interpreter")
    parser.add_argument("--threads", type=int, default=0, help="keras: 0 = TF's default")
    args = parser.parse_args(argv)
    args.tag = args.tag or args.recipe
    if "_" in args.tag:
        parser.error(f"--tag {args.tag!r}: no '_' (it separates the parts of file names)")
    files = mnist_files(args.mnist_dir, {"images": args.images, "labels": args.labels},
                        SHARED)
    args.images, args.labels = str(files["images"]), str(files["labels"])
    {"ours": ours, "keras": keras, "score": score}[args.command](args)


if __name__ == "__main__":
    main()
