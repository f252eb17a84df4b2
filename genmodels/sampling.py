"""Drawing images from any model, and handing them on: as uint8 (what datasets hold and
metrics compare) and as grids of pairs. Uses only the model interface (`sample`,
`to_unit_range`, `value_range`), so it serves the jobs, the metrics and the callbacks."""

import inspect

import torch
from tqdm import tqdm

from genmodels.errors import GenmodelsError

# Options of a diffusion model's sampler: generate.py's name for each, and `sample`'s.
DIFFUSION_OPTIONS = {"sample_steps": "steps", "sampler": "sampler", "eta": "eta",
                     "guidance": "guidance"}


def sampling_options(model, labels=None, temperature: float = 1.0,
                     ema: bool | None = None, truncation: float | None = None,
                     diffusion: dict | None = None) -> dict:
    """Keyword arguments for `model.sample` that ask for these options, after checking
    that the model supports each one (by the arguments its `sample` accepts). `diffusion`:
    sample_steps, sampler, eta, guidance (None: the model's default), for DDPMs."""
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
    if truncation is not None:
        if "truncation" not in accepted:
            raise GenmodelsError(f"truncation={truncation} needs a StyleGAN; {name}.sample "
                                 "takes no truncation.")
        options["truncation"] = truncation
    for option, value in (diffusion or {}).items():
        if value is None:
            continue
        if DIFFUSION_OPTIONS[option] not in accepted:
            raise GenmodelsError(f"{option}={value} needs a diffusion model (model=ddpm); "
                                 f"{name}.sample takes no {DIFFUSION_OPTIONS[option]}.")
        options[DIFFUSION_OPTIONS[option]] = value
    if ema is not None and "ema" in accepted:
        options["ema"] = ema
    if ema and all(getattr(model, kept, None) is None
                   for kept in ("generator_ema", "network_ema")):
        raise GenmodelsError(f"ema=true needs a model that keeps an EMA copy of its "
                             f"generator or network (a GAN or DDPM with model.ema_decay "
                             f"set); this {name} has none.")
    return options


@torch.no_grad()
def sample_images(model, n: int, seed: int = 0, labels=None, temperature: float = 1.0,
                  ema: bool | None = None, truncation: float | None = None,
                  diffusion: dict | None = None, batch_size: int | None = None,
                  progress: bool = False) -> torch.Tensor:
    """n samples as uint8 (N, C, H, W) CPU images, reproducible from `seed`.

    labels: class of each sample for conditional models (a shorter list is repeated).
    ema: for GANs, passed to `sample`: None uses the generator's EMA copy when there is
    one, True insists on it, False takes the live generator.
    truncation: StyleGAN's truncation psi (None: none).
    diffusion: a DDPM's sample_steps, sampler, eta and guidance (None: its defaults).
    batch_size: images per `model.sample` call; None: 1000 on a GPU, 100 on a CPU (where
    larger batches only allocate more: on two cores 500 DDIM samples of the ddpm config
    took 71 s in one batch and 43 s in batches of 100).
    progress: show a progress bar (on stderr) over the batches.
    """
    if batch_size is None:
        batch_size = 1000 if model.device.type == "cuda" else 100
    options = sampling_options(model, labels, temperature, ema, truncation, diffusion)
    if labels is not None:
        labels = torch.as_tensor(list(labels), dtype=torch.long)
        labels = labels.repeat(-(-n // len(labels)))[:n].to(model.device)
    generator = torch.Generator().manual_seed(seed)
    chunks = []
    for start in tqdm(range(0, n, batch_size), desc="Sampling", unit="batch",
                      disable=not progress, leave=False):
        size = min(batch_size, n - start)
        if labels is not None:
            options["labels"] = labels[start : start + size]
        chunks.append(to_uint8(model, model.sample(size, generator=generator, **options)))
    return torch.cat(chunks)


def to_uint8(model, images: torch.Tensor) -> torch.Tensor:
    """Model-range images -> uint8 on the CPU (what datasets hold and metrics compare)."""
    return model.to_unit_range(images).mul(255).round().to(torch.uint8).cpu()


def from_uint8(model, images: torch.Tensor) -> torch.Tensor:
    """uint8 images -> floats in the model's value range, on its device."""
    low, high = model.value_range
    return (images.float() / 255 * (high - low) + low).to(model.device)


def interleave_rows(pairs: torch.Tensor, row_length: int) -> torch.Tensor:
    """(N, 2, C, H, W) input/output pairs (or (N, k, ...) tuples) -> images ordered so
    that a grid with `row_length` columns shows a row of inputs above the row of their
    outputs."""
    n = len(pairs) - len(pairs) % row_length or len(pairs)
    rows = pairs[:n].unflatten(0, (-1, min(row_length, n)))  # (rows, cols, 2, C, H, W)
    return rows.transpose(1, 2).flatten(0, 2)


def chosen_device(device: str) -> str:
    """`device=auto` (a GPU when there is one), cpu, cuda, cuda:N or mps, as this machine
    allows."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        chosen = torch.device(device)
    except (RuntimeError, TypeError):
        raise GenmodelsError(f"device={device!r}; valid choices: auto, cpu, cuda, cuda:N, "
                             "mps.") from None
    usable = {"cpu": True, "cuda": torch.cuda.is_available(),
              "mps": torch.backends.mps.is_available()}
    if not usable.get(chosen.type, False):
        have = ", ".join(kind for kind, ok in usable.items() if ok)
        raise GenmodelsError(f"device={device!r} is not available on this machine; it has: "
                             f"{have} (device=auto picks the best).")
    if chosen.type == "cuda" and (chosen.index or 0) >= torch.cuda.device_count():
        raise GenmodelsError(f"device={device!r}: this machine has "
                             f"{torch.cuda.device_count()} GPU(s), cuda:0 to cuda:"
                             f"{torch.cuda.device_count() - 1}.")
    return device
