"""The GPU check: one command that measures, on the machine it runs on,

- training images per second through the framework and through the bare loop, and their
  ratio, for each family at fp32, bf16-mixed and 16-mixed (the bare loop does not
  reproduce 16-mixed's GradScaler: framework only there), at batch 128 and 512;
- every GAN config for 300 generator steps under 16-mixed: whether its losses stayed
  finite, and its final loss scale;
- DDP scaling (images per second over all GPUs against one) when two or more are visible.

It prints the tables and writes them to <out>/gpu_check.json and <out>/gpu_check.md (and
each row, as it is measured, to <out>/gpu_check_rows.jsonl).

    python benchmarks/gpu_check.py --out gpu_check          # budgeted for ~8 minutes on one GPU
    python benchmarks/gpu_check.py --out /tmp/check --cpu --quick   # the same paths on a CPU

`--quick` measures a few steps of two families and one GAN, to check the command itself.
Its table from one H200 (2026-12-04) is in docs/speed.md.
"""

import argparse
import json
import math
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench  # noqa: E402  (benchmarks/ is not a package)

from genmodels.data import write_idx  # noqa: E402

FAMILIES = ["ae", "vae", "dcgan", "wgan_gp", "progan", "stylegan", "ddpm"]
ROWS_FILE: Path | None = None  # each row as it is measured: a run cut short keeps them


def report(row: dict) -> None:
    print(json.dumps(row), flush=True)
    if ROWS_FILE is not None:
        with ROWS_FILE.open("a") as rows:
            rows.write(json.dumps(row) + "\n")


GANS = ["gan", "gan_upsample", "dcgan", "dcgan64", "cgan", "wgan_gp", "progan", "stylegan"]
PRECISIONS = ["32-true", "bf16-mixed", "16-mixed"]


def mnist_sized_dataset(folder: Path, count: int) -> list[str]:
    """The overrides of a dataset as large as MNIST's training set (count 28x28 images),
    made offline from scikit-learn's digits: each digit resized to 20x20 and placed at a
    random position in the 28x28 frame, as MNIST centres its digits with some play. On the
    1,797 digits themselves an epoch is 11 batches of 128, and its end (a checkpoint
    written) took most of the time measured; here an epoch is as long as a real run's."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    generator = torch.Generator().manual_seed(0)
    which = torch.randint(len(digits.images), (count,), generator=generator)
    small = torch.from_numpy(digits.images).float()[which, None] * (255 / 16)
    images = torch.zeros(count, 28, 28, dtype=torch.uint8)
    resized = torch.nn.functional.interpolate(small, size=20, mode="bilinear").squeeze(1)
    for i, (row, col) in enumerate(torch.randint(9, (count, 2), generator=generator).tolist()):
        images[i, row:row + 20, col:col + 20] = resized[i].round().clamp(0, 255)
    folder.mkdir(parents=True, exist_ok=True)
    write_idx(folder / "images-idx3-ubyte", images)
    write_idx(folder / "labels-idx1-ubyte", torch.from_numpy(digits.target)[which])
    return ["dataset=idx", f"dataset.images={folder / 'images-idx3-ubyte'}",
            f"dataset.labels={folder / 'labels-idx1-ubyte'}"]


def speed_rows(trainer: list[str], families: list[str], batches: list[int],
               precisions: list[str], steps: int, warmup: int) -> list[dict]:
    rows = []
    for model in families:
        for batch in batches:
            for precision in precisions:
                overrides = [f"model={model}", *trainer, f"trainer.precision={precision}",
                             f"dataset.batch_size={batch}", "trainer.enable_progress_bar=false"]
                row = {"model": model, "batch": batch, "precision": precision}
                try:
                    if precision in bench.BARE_PRECISIONS:
                        args = SimpleNamespace(rounds=1, steps=steps, warmup=warmup,
                                               compare=None)
                        speeds = bench.measure(overrides, args)
                        row |= {"framework": speeds["framework"][0], "bare": speeds["bare"][0]}
                        row["ratio"] = row["framework"] / row["bare"]
                    else:
                        with tempfile.TemporaryDirectory() as tmp:
                            cfg = bench.compose_config(["logger=csv", *overrides],
                                                       Path(tmp) / "run")
                            row["framework"] = bench.framework_speed(cfg, warmup, steps)
                except Exception as error:  # one failing cell must not lose the others
                    row["error"] = f"{type(error).__name__}: {error}"
                rows.append(row)
                report(row)
    return rows


def loss_scale(checkpoint: dict) -> float | None:
    """The GradScaler's scale saved in a Lightning checkpoint, if it has one."""
    for value in checkpoint.values():
        if isinstance(value, dict) and "scale" in value and "growth_factor" in value:
            return float(value["scale"])
    return None


def gan_rows(trainer: list[str], gans: list[str], steps: int) -> list[dict]:
    rows = []
    for model in gans:
        row = {"model": model, "generator_steps": steps}
        with tempfile.TemporaryDirectory() as tmp:
            cfg = bench.compose_config(
                [f"model={model}", *trainer, "trainer.precision=16-mixed",
                 f"trainer.max_steps={steps}", "trainer.limit_val_batches=0", "test=false",
                 "callbacks.image_grids=null", "logger=csv", "trainer.enable_progress_bar=false",
                 *(["dataset.image_size=32"] if model == "dcgan64" else [])], Path(tmp) / "run")
            start = time.perf_counter()
            try:
                metrics = bench.train(cfg)
                losses = {k: v for k, v in metrics.items() if "loss" in k}
                row["finite"] = bool(losses) and all(math.isfinite(v) for v in losses.values())
                checkpoint = torch.load(Path(tmp) / "run" / "checkpoints" / "last.ckpt",
                                        weights_only=False, map_location="cpu")
                row["loss_scale"] = loss_scale(checkpoint)
            except Exception as error:  # a diverged GAN is a result, not a crash
                row["finite"], row["error"] = False, f"{type(error).__name__}: {error}"
            row["seconds"] = time.perf_counter() - start
        rows.append(row)
        report(row)
    return rows


def ddp_rows(devices: int, families: list[str], steps: int, warmup: int) -> list[dict]:
    rows = []
    for model in families:
        speeds = {}
        for count in (1, devices):
            trainer = ["trainer=gpu"] if count == 1 else ["trainer=ddp",
                                                          f"trainer.devices={count}"]
            with tempfile.TemporaryDirectory() as tmp:
                cfg = bench.compose_config(
                    ["logger=csv", f"model={model}", *trainer, "dataset.batch_size=128",
                     "trainer.enable_progress_bar=false"], Path(tmp) / "run")
                # Each process trains on its own batch of 128: images/s of all of them.
                speeds[count] = bench.framework_speed(cfg, warmup, steps) * count
        rows.append({"model": model, "devices": devices, "one": speeds[1],
                     "all": speeds[devices], "scaling": speeds[devices] / speeds[1]})
        report(rows[-1])
    return rows


def markdown(result: dict) -> str:
    def number(value, digits=0):
        return "-" if value is None else f"{value:.{digits}f}"

    lines = [f"GPU check on {result['device']} (torch {result['torch']}), "
             f"{result['date']}, {result['seconds']:.0f} s", "",
             "| model | batch | precision | framework img/s | bare img/s | framework/bare |",
             "|---|---|---|---|---|---|"]
    for row in result["speed"]:
        lines.append(f"| {row['model']} | {row['batch']} | {row['precision']} | "
                     f"{number(row.get('framework'))} | {number(row.get('bare'))} | "
                     f"{number(row.get('ratio'), 2)} |" + (f" {row['error']}" if "error" in row
                                                          else ""))
    lines += ["", "| GAN, 16-mixed | generator steps | finite losses | final loss scale | s |",
              "|---|---|---|---|---|"]
    for row in result["gans"]:
        lines.append(f"| {row['model']} | {row['generator_steps']} | {row['finite']} | "
                     f"{number(row.get('loss_scale'))} | {row['seconds']:.0f} |")
    if result["ddp"]:
        lines += ["", "| model | GPUs | img/s on one | img/s on all | scaling |",
                  "|---|---|---|---|---|"]
        for row in result["ddp"]:
            lines.append(f"| {row['model']} | {row['devices']} | {row['one']:.0f} | "
                         f"{row['all']:.0f} | {row['scaling']:.2f} |")
    return "\n".join(lines) + "\n"


def names(valid: list[str]):
    """An argparse type: a comma-separated list of some of `valid` (empty: none)."""
    def parse(text: str) -> list[str]:
        chosen = [name for name in text.split(",") if name]
        unknown = [name for name in chosen if name not in valid]
        if unknown:
            raise argparse.ArgumentTypeError(
                f"unknown {', '.join(unknown)}; valid: {', '.join(valid)}")
        return chosen
    return parse


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="folder for gpu_check.json and .md")
    parser.add_argument("--cpu", action="store_true", help="run on the CPU (to test it)")
    parser.add_argument("--quick", action="store_true",
                        help="a few steps of two families and one GAN")
    parser.add_argument("--families", type=names(FAMILIES), default=FAMILIES,
                        help=f"speed table's models (default {','.join(FAMILIES)})")
    parser.add_argument("--batches", type=lambda text: [int(b) for b in text.split(",")],
                        default=[128, 512], help="speed table's batch sizes (default 128,512)")
    parser.add_argument("--precisions", type=names(PRECISIONS), default=PRECISIONS,
                        help=f"speed table's precisions (default {','.join(PRECISIONS)})")
    parser.add_argument("--gans", type=names(GANS), default=GANS,
                        help=f"GANs trained under 16-mixed (default {','.join(GANS)}; "
                        "none: --gans=)")
    args = parser.parse_args(argv)
    if not args.cpu and not torch.cuda.is_available():
        sys.exit("Error: no GPU is visible; run with --cpu to check the command on a CPU.")
    trainer = ["trainer=cpu"] if args.cpu else ["trainer=gpu"]
    families, gans, batches = args.families, args.gans, args.batches
    if args.quick:
        families, gans, batches = ["vae", "dcgan"], ["gan"], [8]
    steps, warmup, gan_steps = (3, 1, 3) if args.quick else (50, 10, 300)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    data = tempfile.TemporaryDirectory()
    trainer += mnist_sized_dataset(Path(data.name), 2000 if args.quick else 60000)
    global ROWS_FILE
    ROWS_FILE = out / "gpu_check_rows.jsonl"
    ROWS_FILE.write_text("")
    start = time.perf_counter()
    result = {"device": "cpu" if args.cpu else torch.cuda.get_device_name(),
              "torch": torch.__version__, "date": time.strftime("%Y-%m-%d"),
              "speed": speed_rows(trainer, families, batches, args.precisions, steps, warmup),
              "gans": gan_rows(trainer, gans, gan_steps), "ddp": []}
    devices = 0 if args.cpu else torch.cuda.device_count()
    if devices >= 2:
        result["ddp"] = ddp_rows(devices, ["vae", "dcgan"], steps, warmup)
    result["seconds"] = time.perf_counter() - start
    (out / "gpu_check.json").write_text(json.dumps(result, indent=2) + "\n")
    table = markdown(result)
    (out / "gpu_check.md").write_text(table)
    print(table)
    return result


if __name__ == "__main__":
    main()
