"""The seed text's claims about autoencoders (Geron, Hands-On ML, ch. 17), checked on real
MNIST with the framework's own models and training:

- a sparse autoencoder with the KL sparsity penalty (target 0.1) drives most codings near
  zero ("about 70% of activations below 0.1, about 90% of neurons with a mean activation
  between 0.1 and 0.2"), while the same network without the penalty does not;
- a tied autoencoder reaches about the same reconstruction loss as the untied one with
  about half the parameters;
- the linear autoencoder's reconstruction error equals PCA's with the same dimension.

Data: an IDX images file, the MNIST test set's t10k-images-idx3-ubyte.gz in `--mnist-dir`
(torchvision's MNIST downloads it into <data_dir>/MNIST/raw/) or any `--images`; the
first 80% train, the last 20% are the held-out images every number is measured on.

    python benchmarks/seed_claims.py --mnist-dir data/MNIST/raw --epochs 10
    python benchmarks/seed_claims.py --images t10k-images-idx3-ubyte.gz --epochs 20 \
        --out claims.json
"""

import argparse
import json
import logging
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import open_dict
from sklearn.decomposition import PCA

from genmodels.config import build
from genmodels.engine.runs import load_model
from genmodels.jobs.train import train

sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/ is not a package
from compare_keras import mnist_files  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data" / "mnist-t10k"  # the default, where it exists

MODELS = {  # name: overrides
    "sparse_ae (KL, target 0.1)": ["model=sparse_ae"],
    "sparse_ae without penalty": ["model=sparse_ae", "model.sparsity_weight=0"],
    "ae": ["model=ae"],
    "tied_ae": ["model=tied_ae"],
    "linear_ae": ["model=linear_ae"],
}


def trained_model(overrides: list[str], images: Path, epochs: int, seed: int, out: Path):
    """Train with the framework (as `python train.py` would) and reload the final model."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("config", return_hydra_config=True, overrides=[
            *overrides, "dataset=idx", f"dataset.images={images}", "dataset.val_fraction=0.2",
            "dataset.test_fraction=0", "dataset.ordered_split=true", "trainer=cpu",
            f"trainer.max_epochs={epochs}", "trainer.enable_progress_bar=false",
            "logger=csv", "test=false", f"seed={seed}"])
    with open_dict(cfg):
        cfg.paths.output_dir = str(out)
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        del cfg.hydra
    train(cfg)
    datamodule = build(cfg.dataset)
    datamodule.setup()
    held_out = datamodule.scale(datamodule.splits["val"][0])
    train_images = datamodule.scale(datamodule.splits["train"][0])
    return load_model(out), train_images, held_out


def measure(name: str, model, train_images, held_out) -> dict:
    with torch.no_grad():
        codings = model.encode(held_out)
        recon = model.reconstruct(held_out).clamp(0, 1)
    flat = held_out.flatten(1)
    row = {
        "parameters": sum(p.numel() for p in model.parameters()),
        "val_bce_per_pixel": torch.nn.functional.binary_cross_entropy(
            recon.flatten(1).clamp(1e-7, 1 - 1e-7), flat).item(),
        "val_mse_per_pixel": (recon.flatten(1) - flat).pow(2).mean().item(),
    }
    if name.startswith("sparse"):
        neuron_means = codings.mean(0)
        row |= {
            "activations_below_0.1": (codings < 0.1).float().mean().item(),
            "neurons_mean_in_[0.1,0.2]": ((neuron_means >= 0.1) & (neuron_means <= 0.2))
            .float().mean().item(),
            "mean_activation": codings.mean().item(),
            "neuron_mean_quartiles": [round(q, 3) for q in
                                      neuron_means.quantile(torch.tensor([.25, .5, .75])).tolist()],
        }
    if name == "linear_ae":
        pca = PCA(n_components=codings.shape[1]).fit(train_images.flatten(1).numpy())
        projected = pca.inverse_transform(pca.transform(flat.numpy()))
        # The linear AE's output is not clipped for this comparison: both are affine maps.
        with torch.no_grad():
            linear = model.decode(codings).flatten(1)
        row["val_mse_per_pixel"] = (linear - flat).pow(2).mean().item()
        row["pca_val_mse_per_pixel"] = float(np.mean((projected - flat.numpy()) ** 2))
    return row


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mnist-dir", type=Path, default=None,
                        help="folder of t10k-images-idx3-ubyte.gz (or its MNIST/raw/); "
                             "default ../shared/data/mnist-t10k if present")
    parser.add_argument("--images", type=Path, default=None,
                        help="IDX images file (else in --mnist-dir)")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON")
    parser.add_argument("--only", nargs="*", choices=list(MODELS), default=list(MODELS),
                        help="measure only these models")
    parser.add_argument("--override", nargs="*", default=[],
                        help="extra config overrides for every model, e.g. model.optimizer.lr=3e-3")
    args = parser.parse_args(argv)
    args.images = mnist_files(args.mnist_dir, {"images": args.images}, SHARED)["images"]
    logging.getLogger("genmodels").setLevel(logging.WARNING)
    results = {}
    with tempfile.TemporaryDirectory() as runs:
        for i, name in enumerate(args.only):
            model, train_images, held_out = trained_model(
                MODELS[name] + args.override, args.images.expanduser().resolve(), args.epochs,
                args.seed, Path(runs) / f"run{i}")
            results[name] = measure(name, model, train_images, held_out)
            print(name, json.dumps(results[name]), flush=True)
    print(f"\n{args.epochs} epochs on {args.images.name} (first 80% train, last 20% measured)\n")
    columns = sorted({k for row in results.values() for k in row})
    print("| model | " + " | ".join(columns) + " |")
    print("| --- |" + " --- |" * len(columns))
    for name, row in results.items():
        cells = [(f"{row[c]:.4g}" if isinstance(row[c], float) else str(row[c]))
                 if c in row else "" for c in columns]
        print(f"| {name} | " + " | ".join(cells) + " |")
    if args.out:
        args.out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
