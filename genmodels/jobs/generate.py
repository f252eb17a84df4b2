"""The job behind `generate.py`: images from a trained run, as a PNG grid and an .npz.

Each task takes the model and the config and returns (images, extra arrays, grid width):
- `samples`: `num` seeded samples, optionally of given classes (conditional models),
  at a temperature (VAEs), from the EMA generator (GANs that keep one), truncated
  (StyleGAN);
- `reconstruct`: given image files, or the first `num` images of a dataset split, above
  their reconstructions (models with `reconstruct`);
- the latent-space tools of `genmodels.latent`, for models with `encode`/`decode` (a
  GAN's `decode` is its generator, so it walks between prior draws):
  `interpolate` (pairs of images or of prior draws), `manifold` (2-d latent spaces),
  `semantic` (a smooth grid between random codings) and `arithmetic` (images shifted
  along an attribute vector of the run's dataset);
- `top_activations` (models with `encode`): for each coding unit, the images of the split
  (or given files) that activate it most, one row per unit.
A new task is one function plus one entry in TASKS.
"""

import logging
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig, ListConfig
from torchvision.utils import make_grid, save_image

from genmodels import latent
from genmodels.config import (
    build,
    check_override_types,
    check_whole_number,
    options_digest,
    refuse_added_keys,
)
from genmodels.data.datamodule import prepare_images
from genmodels.data.datasets import IMAGE_SUFFIXES, read_image
from genmodels.engine.rundirs import run_directory
from genmodels.engine.runs import (
    checkpoint_of,
    load_config,
    model_from_checkpoint,
    read_checkpoint,
)
from genmodels.errors import GenmodelsError
from genmodels.files import make_output_folder, write_atomically
from genmodels.nn.diffusion import SAMPLERS
from genmodels.sampling import (
    DIFFUSION_OPTIONS,
    chosen_device,
    from_uint8,
    interleave_rows,
    sample_images,
    to_uint8,
)

log = logging.getLogger(__name__)


# --- tasks ------------------------------------------------------------------------------


def samples_task(model, cfg: DictConfig):
    labels = as_list(cfg.labels)
    images = sample_images(model, cfg.num, seed=cfg.seed, labels=labels,
                           temperature=cfg.temperature, ema=cfg.ema,
                           truncation=cfg.get("truncation"),
                           diffusion={name: cfg.get(name) for name in DIFFUSION_OPTIONS})
    extra = {} if labels is None else {"labels": np.resize(np.array(labels), cfg.num)}
    return images, extra, (len(labels) if labels else cfg.nrow)


@torch.no_grad()
def reconstruct_task(model, cfg: DictConfig):
    inputs = input_images(model, cfg, cfg.num)
    outputs = torch.cat([to_uint8(model, model.reconstruct(from_uint8(model, batch)))
                         for batch in inputs.split(500)])
    grid = interleave_rows(torch.stack([inputs, outputs], dim=1), row_length=cfg.nrow)
    return grid, {"inputs": inputs.numpy(), "reconstructions": outputs.numpy()}, cfg.nrow


def interpolate_task(model, cfg: DictConfig):
    """One row of `steps` images per pair: of prior draws from `seeds`, of image files, or
    of the split's images at `indices` (by default its first 2 * rows; a model without an
    encoder, a GAN, walks between the draws of seeds 0 to 2 * rows - 1)."""
    can_encode = callable(getattr(model, "encode", None))
    if cfg.seeds is None and not can_encode and (cfg.images or cfg.indices is not None):
        raise GenmodelsError(f"Interpolating between images needs an encoder, which "
                             f"{type(model).__name__} lacks: walk between prior draws "
                             "instead, e.g. seeds=[1,2,3,4].")
    if cfg.seeds is not None or not can_encode:
        seeds = ([int(seed) for seed in even_list(cfg.seeds, "seeds")]
                 if cfg.seeds is not None else list(range(2 * cfg.rows)))
        dim = latent.latent_dim(model)
        ends = [torch.randn(dim, generator=torch.Generator().manual_seed(s)) for s in seeds]
        labels = walk_labels(model, cfg)  # a conditional model: each row keeps one class
        row_labels = (None if labels is None
                      else [labels[row % len(labels)] for row in range(len(ends) // 2)])
        rows = [latent.interpolate_codings(
                    model, ends[2 * row], ends[2 * row + 1], cfg.steps, cfg.method,
                    **({} if row_labels is None else {"labels": row_labels[row]}))
                for row in range(len(ends) // 2)]
        extra = {"seeds": np.array(seeds)}
        if row_labels is not None:
            extra["labels"] = np.array(row_labels)
        return to_uint8(model, torch.cat(rows)), extra, cfg.steps
    inputs = pair_images(model, cfg)
    x = from_uint8(model, inputs)
    rows = [latent.interpolate(model, x[i], x[i + 1], cfg.steps, cfg.method)
            for i in range(0, len(x), 2)]
    return to_uint8(model, torch.cat(rows)), {"inputs": inputs.numpy()}, cfg.steps


def pair_images(model, cfg: DictConfig) -> torch.Tensor:
    """uint8 images to interpolate between, pairwise: files, or a split's images."""
    if cfg.images:
        inputs = read_image_files(cfg.images, model.image_shape)
        even_list(list(inputs), "images")
        return inputs
    split = dataset_images(cfg, cfg.split)
    indices = (even_list(cfg.indices, "indices") if cfg.indices is not None
               else list(range(2 * cfg.rows)))
    if max(indices) >= len(split) or min(indices) < 0:
        raise GenmodelsError(f"indices={indices} must lie in 0 to {len(split) - 1}, the "
                             f"images of split={cfg.split!r}.")
    return split[indices]


def manifold_task(model, cfg: DictConfig):
    images = latent.manifold(model, cfg.nrow, span=cfg.span, quantiles=cfg.quantiles)
    return to_uint8(model, images), {}, cfg.nrow


def walk_labels(model, cfg: DictConfig) -> list[int] | None:
    """The classes a latent walk keeps, for a conditional model: `labels`, by default
    0, 1, ..., num_classes - 1; None for an unconditional one (which refuses labels)."""
    labels = as_list(cfg.labels)
    num_classes = getattr(model, "num_classes", None)
    if labels is not None and num_classes is None:
        raise GenmodelsError(f"labels={labels} applies to conditional models; "
                             f"{type(model).__name__} is not one.")
    return list(range(num_classes)) if labels is None and num_classes else labels


def semantic_task(model, cfg: DictConfig):
    """A grid morphing between random codings (of one class, for a conditional model:
    `labels=[c]`, by default the first class)."""
    labels = walk_labels(model, cfg)
    if cfg.labels is not None and len(labels) != 1:
        raise GenmodelsError(f"task=semantic draws one grid of one class: give one label, "
                             f"e.g. labels=[{labels[0]}]; got labels={labels}.")
    options = {} if labels is None else {"labels": labels[0]}
    generator = torch.Generator().manual_seed(cfg.seed)
    images = latent.semantic_interpolation(model, cfg.nrow, cfg.nrow, generator=generator,
                                           **options)
    extra = {} if labels is None else {"labels": np.array(labels[:1])}
    return to_uint8(model, images), extra, cfg.nrow


def arithmetic_task(model, cfg: DictConfig):
    """Each input's coding plus multiples of an attribute vector, estimated on the first
    `attribute_images` of the run's training split: a class label (that class minus the
    rest) or a CelebA attribute name."""
    datamodule = run_datamodule(cfg)
    has_attribute = attribute_mask(datamodule, cfg.attribute)
    has_attribute = has_attribute[: cfg.attribute_images]
    train_images = from_uint8(model, datamodule.splits["train"][0][: cfg.attribute_images])
    vector = latent.attribute_vector(model, train_images, has_attribute)
    inputs = (read_image_files(cfg.images, model.image_shape) if cfg.images
              else split_images(datamodule, cfg.split)[: cfg.rows])
    multiples = [float(m) for m in as_list(cfg.multiples)]
    shifted = latent.shift_along(model, from_uint8(model, inputs), vector, multiples)
    extra = {"inputs": inputs.numpy(), "vector": vector.cpu().numpy(),
             "multiples": np.array(multiples)}
    return to_uint8(model, shifted), extra, len(multiples)


def top_activations_task(model, cfg: DictConfig):
    """One row per coding unit (up to 100): the `nrow` input images (files, or the whole
    split) that activate it most, highest first."""
    inputs = input_images(model, cfg, MAX_IMAGES)
    codings = latent.encode_all(model, from_uint8(model, inputs)).flatten(1)
    top = latent.top_activating(codings, cfg.nrow)
    extra = {"indices": top.numpy(), "activations": codings.gather(
        0, top.T.to(codings.device)).T.cpu().numpy()}
    return inputs[top.flatten()], extra, top.shape[1]


def attribute_mask(datamodule, attribute) -> torch.Tensor:
    """Which training images have `attribute`: a class label, or an attribute name of a
    dataset with `attribute_names` (CelebA)."""
    names = getattr(datamodule, "attribute_names", None)
    if isinstance(attribute, str) and names:
        if attribute not in names:
            raise GenmodelsError(f"attribute={attribute!r} is not an attribute of this "
                                 f"dataset; valid choices: {names}.")
        return datamodule.attributes["train"][:, names.index(attribute)]
    labels = datamodule.splits["train"][1].cpu()
    classes = sorted(set(labels.tolist()) - {-1})
    if not isinstance(attribute, int) or attribute not in classes:
        choices = f"the attribute names {names}" if names else (
            f"a class label {classes}" if classes else "none: the dataset has no labels")
        raise GenmodelsError(f"attribute={attribute!r} is neither a class label nor an "
                             f"attribute name of this dataset; valid choices: {choices}.")
    return labels == attribute


TASKS = {"samples": samples_task, "reconstruct": reconstruct_task,
         "interpolate": interpolate_task, "manifold": manifold_task,
         "semantic": semantic_task, "arithmetic": arithmetic_task,
         "top_activations": top_activations_task}
# The methods a task needs besides `sample`; task=manifold also needs a 2-d latent space.
TASK_NEEDS = {"reconstruct": ("reconstruct",), "interpolate": ("decode",),
              "manifold": ("decode",), "semantic": ("decode",),
              "arithmetic": ("encode", "decode"), "top_activations": ("encode",)}


def tasks_for(model) -> list[str]:
    """The tasks this model supports."""
    tasks = [task for task in TASKS
             if all(callable(getattr(model, m, None)) for m in TASK_NEEDS.get(task, ()))]
    if "manifold" in tasks and latent.latent_dim(model) != 2:
        tasks.remove("manifold")
    return tasks


def check_task(model, task: str) -> None:
    if task in tasks_for(model):
        return
    needs = " and ".join(f"{m}()" for m in TASK_NEEDS[task])
    why = (f"a 2-d latent space; this model's has {latent.latent_dim(model)} dimensions"
           if task == "manifold" and all(callable(getattr(model, m, None)) for m in
                                         TASK_NEEDS[task])
           else f"a model with {needs} (an autoencoder or VAE; a GAN has decode()), which "
           f"{type(model).__name__} lacks")
    raise GenmodelsError(f"task={task} needs {why}; valid tasks for this model: "
                         f"{tasks_for(model)}.")


# --- inputs and outputs -----------------------------------------------------------------


def as_list(value):
    if value is None:
        return None
    return list(value) if isinstance(value, (list, tuple, ListConfig)) else [value]


def even_list(values, name: str) -> list:
    """A list of pair ends: an even, non-zero number of them."""
    values = as_list(values) or []
    if not values or len(values) % 2:
        raise GenmodelsError(f"{name} must come in pairs (an even number, at least 2); got "
                             f"{len(values)}.")
    return values


def input_images(model, cfg: DictConfig, num: int) -> torch.Tensor:
    """uint8 inputs: the image files in cfg.images, else the first `num` images of the
    run's dataset split cfg.split."""
    if cfg.images:
        return read_image_files(cfg.images, model.image_shape)
    return dataset_images(cfg, cfg.split)[:num]


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


def run_datamodule(cfg: DictConfig):
    """The run's own dataset, rebuilt from its config and set up."""
    datamodule = build(load_config(checkpoint_of(cfg))["dataset"])
    datamodule.setup()
    return datamodule


def split_images(datamodule, split: str) -> torch.Tensor:
    if split not in datamodule.splits:
        raise GenmodelsError(f"split={split!r}; valid choices: {sorted(datamodule.splits)}.")
    return datamodule.splits[split][0].cpu()


def dataset_images(cfg: DictConfig, split: str) -> torch.Tensor:
    """uint8 images of a split of the run's own dataset."""
    return split_images(run_datamodule(cfg), split)


def output_paths(cfg: DictConfig, checkpoint: Path, step: int) -> tuple[Path, Path]:
    """<out>.png and <out>.npz; by default in the run's `generated/` folder, named by the
    task, the checkpoint and its training step, the seed, and a digest of every other
    option, so that different outputs never share a name. Existing files are never
    overwritten."""
    if cfg.out:
        stem = Path(cfg.out).expanduser()
        stem = stem.with_suffix("") if stem.suffix in (".png", ".npz") else stem
    else:
        run_dir = run_directory(checkpoint)
        detail = {"interpolate": cfg.method, "arithmetic": f"attribute{cfg.attribute}",
                  "top_activations": f"{cfg.split}_top{cfg.nrow}",
                  "manifold": f"{cfg.nrow}x{cfg.nrow}", "semantic": f"{cfg.nrow}x{cfg.nrow}"}
        digest = options_digest(cfg, leave_out=("run", "ckpt", "out", "device"))
        name = (f"{cfg.task}_{checkpoint.stem}_step{step}_seed{cfg.seed}_"
                f"{detail.get(cfg.task, f'n{cfg.num}')}")
        if cfg.task == "samples" and cfg.ema is not None:
            name += "_ema" if cfg.ema else "_live"
        if cfg.task == "samples" and cfg.get("truncation") is not None:
            name += f"_trunc{cfg.truncation}"
        stem = run_dir / "generated" / f"{name}_{digest}"
    png, npz = stem.parent / f"{stem.name}.png", stem.parent / f"{stem.name}.npz"
    for path in (png, npz):
        if path.exists():
            raise GenmodelsError(f"{path} already exists; refusing to overwrite it. Choose "
                                 "another out=<path>, or seed/num, or move the file away.")
    return png, npz


# More images than a grid one can look at, or memory holds: e.g. num=100000000 ran for hours,
# task=semantic nrow=100000 asked for 400 GB. (evaluate caps its samples alike.)
MAX_IMAGES = 100_000


def check_options(cfg: DictConfig) -> None:
    """One sentence for each option outside what its task can take, before anything runs."""
    if cfg.task not in TASKS:
        raise GenmodelsError(f"Unknown task={cfg.task!r}; valid choices: {sorted(TASKS)}.")

    grid_side = 316 if cfg.task in ("manifold", "semantic") else MAX_IMAGES  # nrow^2 images
    for name, low, high in (("num", 1, MAX_IMAGES), ("nrow", 1, grid_side),
                            ("rows", 1, MAX_IMAGES), ("steps", 2, 1000)):
        check_whole_number(name, cfg.get(name), low, high)
    labels = as_list(cfg.get("labels")) or []
    if any(type(label) is not int for label in labels):  # 1.7 drew class 1
        raise GenmodelsError(f"labels must be whole numbers (class labels), got {labels}.")
    multiples = as_list(cfg.get("multiples")) or []
    if any(type(m) not in (int, float) for m in multiples):
        raise GenmodelsError(f"multiples must be numbers, got {multiples}.")
    if cfg.get("sample_steps") is not None:
        check_whole_number("sample_steps", cfg.sample_steps, 1)
    for name in ("truncation", "temperature", "eta"):
        value = cfg.get(name)
        if value is not None and (type(value) not in (int, float) or value < 0):
            raise GenmodelsError(f"{name} must be a number of at least 0 (or null), got "
                                 f"{value!r}.")
    guidance = cfg.get("guidance")
    if guidance is not None and type(guidance) not in (int, float):
        raise GenmodelsError(f"guidance must be a number (or null), got {guidance!r}.")
    sampler = cfg.get("sampler")
    if sampler is not None and sampler not in SAMPLERS:
        raise GenmodelsError(f"Unknown sampler={sampler!r}; valid choices: "
                             f"{', '.join(SAMPLERS)}.")


def generate(cfg: DictConfig) -> tuple[Path, Path]:
    """Run `cfg.task` on the trained model; returns the PNG and .npz paths written."""
    check_override_types()  # `num=abc`: one sentence, not a TypeError deep inside
    refuse_added_keys()
    check_options(cfg)
    device = chosen_device(cfg.device)
    checkpoint_path = checkpoint_of(cfg)
    checkpoint = read_checkpoint(checkpoint_path)
    png, npz = output_paths(cfg, checkpoint_path, checkpoint.get("global_step", 0))
    make_output_folder(png.parent)
    model = model_from_checkpoint(checkpoint).to(device)
    check_task(model, cfg.task)
    images, extra, nrow = TASKS[cfg.task](model, cfg)
    grid = make_grid(images.float() / 255, nrow=nrow, padding=2, pad_value=1.0)
    write_atomically(png, lambda file: save_image(grid, file, format="png"))
    write_atomically(npz, lambda file: np.savez_compressed(file, images=images.numpy(), **extra))
    log.info("Wrote %s and %s", png, npz)
    return png, npz
