"""Ablations of the shipped recipes on the data of benchmarks/compare_keras.py (the first
8,000 images of the MNIST t10k split train, the last 2,000 are the reference): each
variant of a recipe, several seeds, trained as parallel jobs (one `compare_keras.py ours`
each), its samples scored as the book's are.

    # every DCGAN variant, 3 seeds, samples after 10 and 20 epochs, 12 jobs on one GPU:
    python benchmarks/ablation.py dcgan --accelerator gpu --jobs 12 --out ablation
    # the table: means and spreads over seeds, one line per variant, budget and side
    # (side ours_ema: the EMA copy of G, which every DCGAN variant keeps):
    python benchmarks/compare_keras.py score --out ablation

Groups: `dcgan` (variants of model=dcgan at the book's batch of 32, against the book's
Keras DCGAN, docs/results.md#better-than-the-book), `dcgan40` (to 40 epochs: the 20
minutes of two CPU cores that the diffusion recipe gets), `replay` (the book's exercise:
the DCGAN with and without experience replay), `ddpm` (experiment=ddpm_mnist's variants,
each for as many steps as it takes in 20 minutes on two CPU cores here, so that a faster
machine measures the CPU recipe's budget). A variant's name says what it changes ('+'
joins changes); `--variants` picks some. The IDX files: `--mnist-dir`, as compare_keras.py.
"""

import argparse
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

DIFFAUG = "model.augment=[translation,cutout]"
R1 = ["model.penalty=r1", "model.penalty_weight=1"]
# model=dcgan as it shipped before this ablation (the book's loss and D plus one-sided
# label smoothing); every config has G's EMA (0.999, with warm-up), which does not change
# training: both the live G (side ours) and the EMA (side ours_ema) are scored.
BEFORE = ["model.loss=non_saturating", "model.label_smoothing=0.1", "model.spectral_norm=false"]
# Training steps of batch 64 in 20 minutes on two CPU cores: 2,337 for experiment=ddpm_mnist
# as it ships (docs/results.md); the others scaled by the bare loop's speed relative to it
# (benchmarks/bench.py, same session).
DDPM_STEPS = 2337

GROUPS = {
    "dcgan": {
        "recipe": "dcgan-default", "seeds": [0, 1, 2], "budget": ["--epochs", "10", "20"],
        "variants": {
            "base": BEFORE,
            "diffaug": [*BEFORE, DIFFAUG],
            "diffaugcolor": [*BEFORE, "model.augment=[color,translation,cutout]"],
            "r1": [*BEFORE, *R1],
            "ttur": [*BEFORE, "model.g_optimizer.lr=2.5e-4"],
            "diffaug+r1": [*BEFORE, DIFFAUG, *R1],
            "hinge+sn": [],  # model=dcgan as it ships since: hinge loss, spectral norm in D
            "diffaug+hinge+sn": [DIFFAUG],
        },
    },
    "dcgan40": {
        "recipe": "dcgan-default", "seeds": [0, 1], "budget": ["--epochs", "40"],
        "variants": {"shipped40": [], "diffaug40": [DIFFAUG]},
    },
    # The book's exercise: does experience replay (a buffer of past fakes, half of each of
    # D's batches) help the DCGAN?
    "replay": {
        "recipe": "dcgan-default", "seeds": [0, 1, 2], "budget": ["--epochs", "10"],
        "variants": {"shipped": [], "replay": ["model.replay_capacity=2000"]},
    },
    "ddpm": {
        "recipe": "ddpm", "seeds": [0, 1], "budget": ["--steps", str(DDPM_STEPS)],
        "variants": {
            "base": [],
            "s25": {"sample": ["sample_steps=25"]},
            "eta05": {"sample": ["eta=0.5"]},
            "lr2e-4": ["model.optimizer.lr=2e-4"],
            "lr2e-3": ["model.optimizer.lr=2e-3"],
            "v": ["model.prediction=v"],
            "minsnr": ["model.min_snr_gamma=5"],
            "v+minsnr": ["model.prediction=v", "model.min_snr_gamma=5"],
            "linear": ["model.schedule=linear"],
            "dropout0": ["model.network.dropout=0"],
            "noclip": {"sample": ["clip_x0=false"]},
            # bare-loop speed relative to the shipped U-Net: 52, 37 and 80 against 120
            # images/s (bench.py, one thread)
            "mid": {"overrides": ["model.network.widths=[24,48,96]"], "speed": 0.44},
            "wide": {"overrides": ["model.network.widths=[32,64,128]"], "speed": 0.31},
            "res2": {"overrides": ["model.network.num_res_blocks=2"], "speed": 0.65},
        },
    },
}


def jobs_of(group: str, chosen: list[str] | None,
            steps: int | None = None) -> list[tuple[str, int, list[str]]]:
    """(tag, seed, compare_keras.py arguments) of each run of a group."""
    spec = GROUPS[group]
    variants = spec["variants"]
    jobs = []
    for name, variant in variants.items():
        if chosen and name not in chosen:
            continue
        variant = variant if isinstance(variant, dict) else {"overrides": variant}
        budget = spec["budget"]
        if "speed" in variant:  # as many steps as this variant takes in the same time
            budget = ["--steps", str(round(DDPM_STEPS * variant["speed"]))]
        if steps:
            budget = ["--steps", str(steps)]
        tag = f"{group}-{name}"
        for seed in spec["seeds"]:
            arguments = ["--recipe", spec["recipe"], "--tag", tag, "--seeds", str(seed),
                         *budget]
            if variant.get("overrides"):
                arguments += ["--override", *variant["overrides"]]
            if variant.get("sample"):
                arguments += ["--sample-option", *variant["sample"]]
            jobs.append((tag, seed, arguments))
    return jobs


def run_job(job, args) -> str:
    tag, seed, arguments = job
    log = Path(args.out) / "logs" / f"{tag}_seed{seed}.log"
    command = [sys.executable, str(ROOT / "benchmarks" / "compare_keras.py"), "ours",
               *arguments, "--out", args.out, "--runs-dir", args.runs_dir,
               "--accelerator", args.accelerator]
    if args.mnist_dir:
        command += ["--mnist-dir", args.mnist_dir]
    # Parallel jobs share the cores: one thread each (the GPU does the work).
    env = os.environ | ({"OMP_NUM_THREADS": "1"} if args.jobs > 1 else {})
    started = time.perf_counter()
    with open(log, "w") as out:
        code = subprocess.run(command, stdout=out, stderr=subprocess.STDOUT, env=env,
                              cwd=ROOT).returncode
    result = (f"{tag} seed {seed}: {'done' if code == 0 else f'FAILED ({code}), see {log}'} "
              f"in {time.perf_counter() - started:.0f} s")
    print(result, flush=True)
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("groups", nargs="+", choices=sorted(GROUPS))
    parser.add_argument("--variants", nargs="*", default=None, help="default: all")
    parser.add_argument("--out", default="ablation", help="samples, logs (and the scores)")
    parser.add_argument("--runs-dir", default=None,
                        help="the training runs (checkpoints); default <out>/ours/runs")
    parser.add_argument("--jobs", type=int, default=1, help="runs at once")
    parser.add_argument("--accelerator", default="cpu", help="cpu, gpu or auto")
    parser.add_argument("--steps", type=int, default=None,
                        help="train every run for this many steps instead (a quick check)")
    parser.add_argument("--mnist-dir", default=None, help="as for compare_keras.py")
    args = parser.parse_args(argv)
    args.runs_dir = args.runs_dir or str(Path(args.out) / "ours" / "runs")
    (Path(args.out) / "logs").mkdir(parents=True, exist_ok=True)
    known = {name for group in args.groups for name in GROUPS[group]["variants"]}
    unknown = sorted(set(args.variants or []) - known)
    if unknown:
        sys.exit(f"Error: no variant {unknown[0]!r} in {', '.join(args.groups)}; valid "
                 f"choices: {', '.join(sorted(known))}.")
    jobs = [job for group in args.groups for job in jobs_of(group, args.variants, args.steps)]
    print(f"{len(jobs)} runs, {args.jobs} at once", flush=True)
    with ThreadPoolExecutor(args.jobs) as pool:
        results = list(pool.map(lambda job: run_job(job, args), jobs))
    failed = [r for r in results if "FAILED" in r]
    if failed:
        sys.exit(f"{len(failed)} of {len(results)} runs failed:\n" + "\n".join(failed))


if __name__ == "__main__":
    main()
