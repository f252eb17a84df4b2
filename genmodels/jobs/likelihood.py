"""The ELBO and importance-sampled NLL of a trained VAE on one of its dataset's splits, or
the variational bound of a trained diffusion model, from the command line (the bounds
themselves are genmodels/metrics/likelihood.py):

    python -m genmodels.jobs.likelihood logs/runs/<run> --k 1000 --split val
    python -m genmodels.jobs.likelihood logs/runs/<ddpm run> --split test
"""

import argparse
import time

import torch

from genmodels.config import build
from genmodels.engine.config_in_checkpoint import ConfigInCheckpoint
from genmodels.engine.runs import find_checkpoint, load_model
from genmodels.errors import GenmodelsError
from genmodels.metrics.likelihood import diffusion_bound, importance_sampled_nll, negative_elbo


def split_images(run: str, split: str) -> torch.Tensor:
    """The images of a run's dataset split, scaled as in training (and binarized the fixed
    way for evaluation, if the run binarized)."""
    checkpoint = torch.load(find_checkpoint(run), map_location="cpu", weights_only=False)
    datamodule = build(checkpoint[ConfigInCheckpoint.key]["dataset"])
    datamodule.setup()
    if split not in datamodule.splits:
        raise GenmodelsError(f"Unknown split {split!r}; valid choices: "
                             f"{sorted(datamodule.splits)}.")
    return datamodule.scale(datamodule.splits[split][0])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m genmodels.jobs.likelihood",
        description="ELBO and importance-sampled NLL (nats per image) of a trained VAE, "
                    "or the variational bound (nats per image, bits/dim) of a diffusion model.")
    parser.add_argument("run", help="run directory or checkpoint file")
    parser.add_argument("--k", type=int, default=1000,
                        help="importance samples per image (VAEs)")
    parser.add_argument("--split", default="val", help="val, test or train")
    parser.add_argument("--limit", type=int, default=None, help="use the first N images only")
    parser.add_argument("--batch-size", type=int, default=20000,
                        help="decoder passes per forward (images x samples)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)
    try:
        model = load_model(args.run, map_location=args.device)
        images = split_images(args.run, args.split)[: args.limit]
    except GenmodelsError as error:
        raise SystemExit(f"Error: {error}") from None
    torch.manual_seed(args.seed)
    if hasattr(model, "variational_bound"):  # a diffusion model
        start = time.perf_counter()
        bound = diffusion_bound(model, images, generator=torch.Generator().manual_seed(args.seed))
        print(f"{args.split}: {len(images)} images, variational bound {bound['total']:.2f} "
              f"nats per image, {bound['bits_per_dim']:.4f} bits/dim (prior "
              f"{bound['prior']:.3f}, diffusion {bound['diffusion']:.2f}, decoder "
              f"{bound['decoder']:.2f}; {time.perf_counter() - start:.0f} s)")
        return
    generator = torch.Generator(device=model.device).manual_seed(args.seed)
    start = time.perf_counter()
    elbo = negative_elbo(model, images)
    nll = importance_sampled_nll(model, images, args.k, args.batch_size, generator)
    seconds = time.perf_counter() - start
    print(f"{args.split}: {len(images)} images, -ELBO {elbo:.2f} nats, "
          f"NLL (k={args.k}) {nll:.2f} nats per image ({seconds:.0f} s)")



if __name__ == "__main__":
    main()
