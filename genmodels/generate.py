"""The job behind `generate.py`: images from a trained run, as a PNG grid and an .npz.

Each task takes the model and the config and returns (images, extra arrays, grid width):
- `samples`: `num` seeded samples, optionally of given classes (conditional models),
  at a temperature (VAEs), from the EMA generator (GANs that keep one);
- `reconstruct`: given image files, or the first `num` images of a dataset split, above
  their reconstructions (models with `reconstruct`).
A new task is one function plus one entry in TASKS.
"""

import inspect
import logging
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig, ListConfig
from torchvision.utils import make_grid, save_image

from genmodels.callbacks.image_grids import interleave_rows
from genmodels.config import build
from genmodels.data.datamodule import prepare_images
from genmodels.data.datasets import IMAGE_SUFFIXES, read_image
from genmodels.errors import GenmodelsError
from genmodels.runs import find_checkpoint, load_config, load_model

log = logging.getLogger(__name__)


def sampling_options(model, labels=None, temperature: float = 1.0, ema: bool = False) -> dict:
    """Keyword arguments for `model.sample` that ask for these options, after checking
    that the model supports each one (by the arguments its `sample` accepts)."""
    accepted = inspect.signature(model.sample).parameters
    name = type(model).__name__
    options = {}
    if labels is not None:
        if "labels" not in accepted:
            raise GenmodelsError(
                f"labels=... needs a conditional model, but {name}.sample takes no class "
                "labels; leave labels unset."
            )
        num_classes = getattr(model, "num_classes", None)
        bad = [int(c) for c in labels if c < 0 or (num_classes and c >= num_classes)]
        if bad:
            raise GenmodelsError(f"labels {bad} are not classes of this model "
                                 f"(0 to {num_classes - 1 if num_classes else '?'}).")
    if temperature != 1.0:
        if "temperature" not in accepted:
            raise GenmodelsError(
                f"temperature={temperature} needs a model with a latent prior to scale "
                f"(a VAE); {name}.sample takes no temperature."
            )
        options["temperature"] = temperature
    if ema:
        if "ema" in accepted:
            options["ema"] = True
        elif getattr(model, "ema_generator", None) is None:
            raise GenmodelsError(
                f"ema=true needs a model that keeps an EMA copy of its generator; this "
                f"{name} has none (no `ema_generator`, no `ema` argument to sample)."
            )
    return options


@torch.no_grad()
def sample_images(model, n: int, seed: int = 0, labels=None, temperature: float = 1.0,
                  ema: bool = False, batch_size: int = 1000) -> torch.Tensor:
    """n samples as uint8 (N, C, H, W) CPU images, reproducible from `seed`.

    labels: class of each sample for conditional models (a shorter list is repeated).
    ema: sample from the generator's EMA copy (`sample(..., ema=True)`, or the model's
    `ema_generator` swapped in for `generator` while sampling).
    """
    options = sampling_options(model, labels, temperature, ema)
    if labels is not None:
        labels = torch.as_tensor(list(labels), dtype=torch.long)
        labels = labels.repeat(-(-n // len(labels)))[:n].to(model.device)
    generator = torch.Generator().manual_seed(seed)
    swap_in_ema = ema and "ema" not in options
    original = model.generator if swap_in_ema else None
    if swap_in_ema:
        model.generator = model.ema_generator
    try:
        chunks = []
        for start in range(0, n, batch_size):
            size = min(batch_size, n - start)
            if labels is not None:
                options["labels"] = labels[start : start + size]
            chunks.append(to_uint8(model, model.sample(size, generator=generator, **options)))
    finally:
        if swap_in_ema:
            model.generator = original
    return torch.cat(chunks)


def to_uint8(model, images: torch.Tensor) -> torch.Tensor:
    """Model-range images -> uint8 on the CPU (what datasets hold and metrics compare)."""
    return model.to_unit_range(images).mul(255).round().to(torch.uint8).cpu()


def from_uint8(model, images: torch.Tensor) -> torch.Tensor:
    """uint8 images -> floats in the model's value range, on its device."""
    low, high = model.value_range
    return (images.float() / 255 * (high - low) + low).to(model.device)


# --- tasks ------------------------------------------------------------------------------


def samples_task(model, cfg: DictConfig):
    labels = as_list(cfg.labels)
    images = sample_images(model, cfg.num, seed=cfg.seed, labels=labels,
                           temperature=cfg.temperature, ema=cfg.ema)
    extra = {} if labels is None else {"labels": np.resize(np.array(labels), cfg.num)}
    return images, extra, (len(labels) if labels else cfg.nrow)


@torch.no_grad()
def reconstruct_task(model, cfg: DictConfig):
    if not hasattr(model, "reconstruct"):
        raise GenmodelsError(f"task=reconstruct needs a model with `reconstruct` "
                             f"(an autoencoder or VAE), not {type(model).__name__}.")
    inputs = (read_image_files(cfg.images, model.image_shape) if cfg.images
              else dataset_images(cfg, cfg.split)[: cfg.num])
    outputs = torch.cat([to_uint8(model, model.reconstruct(from_uint8(model, batch)))
                         for batch in inputs.split(500)])
    grid = interleave_rows(torch.stack([inputs, outputs], dim=1), row_length=cfg.nrow)
    return grid, {"inputs": inputs.numpy(), "reconstructions": outputs.numpy()}, cfg.nrow


TASKS = {"samples": samples_task, "reconstruct": reconstruct_task}


# --- inputs and outputs -----------------------------------------------------------------


def as_list(value):
    if value is None:
        return None
    return list(value) if isinstance(value, (list, tuple, ListConfig)) else [value]


def read_image_files(paths, image_shape) -> torch.Tensor:
    """Image files (or every image in given folders), prepared to the model's shape."""
    files = []
    for path in map(Path, as_list(paths)):
        path = path.expanduser()
        if path.is_dir():
            files += sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        elif path.is_file():
            files.append(path)
        else:
            raise GenmodelsError(f"images={str(path)!r} is neither an image file nor a folder.")
    if not files:
        raise GenmodelsError(f"No image files ({', '.join(IMAGE_SUFFIXES)}) in images={paths}.")
    channels, size, _ = image_shape
    return torch.cat([prepare_images(read_image(f, channels)[None], size, channels)
                      for f in files])


def dataset_images(cfg: DictConfig, split: str) -> torch.Tensor:
    """uint8 images of a split of the run's own dataset, rebuilt from its config."""
    datamodule = build(load_config(checkpoint_of(cfg))["dataset"])
    datamodule.setup()
    if split not in datamodule.splits:
        raise GenmodelsError(f"split={split!r}; valid choices: {sorted(datamodule.splits)}.")
    return datamodule.splits[split][0].cpu()


def checkpoint_of(cfg: DictConfig) -> Path:
    if bool(cfg.get("run")) == bool(cfg.get("ckpt")):
        raise GenmodelsError("Give exactly one of run=<run directory> or ckpt=<checkpoint file>.")
    return find_checkpoint(cfg.run or cfg.ckpt)


def output_paths(cfg: DictConfig, checkpoint: Path) -> tuple[Path, Path]:
    """<out>.png and <out>.npz; by default in the run's `generated/` folder. Existing
    files are never overwritten."""
    if cfg.out:
        stem = Path(cfg.out).expanduser()
        stem = stem.with_suffix("") if stem.suffix in (".png", ".npz") else stem
    else:
        run_dir = checkpoint.parent.parent if checkpoint.parent.name == "checkpoints" \
            else checkpoint.parent
        name = f"{cfg.task}_{checkpoint.stem}_seed{cfg.seed}_n{cfg.num}"
        if cfg.task == "samples" and cfg.ema:
            name += "_ema"
        stem = run_dir / "generated" / name
    png, npz = stem.parent / f"{stem.name}.png", stem.parent / f"{stem.name}.npz"
    for path in (png, npz):
        if path.exists():
            raise GenmodelsError(f"{path} already exists; refusing to overwrite it. Choose "
                                 "another out=<path>, or seed/num, or move the file away.")
    return png, npz


def generate(cfg: DictConfig) -> tuple[Path, Path]:
    """Run `cfg.task` on the trained model; returns the PNG and .npz paths written."""
    if cfg.task not in TASKS:
        raise GenmodelsError(f"Unknown task={cfg.task!r}; valid choices: {sorted(TASKS)}.")
    if cfg.num < 1:
        raise GenmodelsError(f"num must be at least 1, got {cfg.num}.")
    checkpoint = checkpoint_of(cfg)
    png, npz = output_paths(cfg, checkpoint)
    device = cfg.device if cfg.device != "auto" else ("cuda" if torch.cuda.is_available()
                                                      else "cpu")
    model = load_model(checkpoint).to(device)
    images, extra, nrow = TASKS[cfg.task](model, cfg)
    png.parent.mkdir(parents=True, exist_ok=True)
    save_image(make_grid(images.float() / 255, nrow=nrow, padding=2, pad_value=1.0), png)
    np.savez_compressed(npz, images=images.numpy(), **extra)
    log.info("Wrote %s and %s", png, npz)
    return png, npz
