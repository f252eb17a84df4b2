"""Latent-space tools: sampling, the 2-d manifold, interpolations and attribute arithmetic.

They work for every VAE and, through the common interface (`encode`, `decode`), for any
model that has them (an autoencoder too, though only a VAE's prior makes N(0, I) codings
meaningful). Inputs are images in the model's value range; outputs are decoded images in
that range, on the model's device (`model.to_unit_range` maps them to [0, 1] for display).
Call them on a model in eval mode (`genmodels.engine.runs.load_model` returns one), so that batch
norm uses its running statistics.

    from genmodels import latent
    grid = latent.manifold(model, n=20, quantiles=True)       # (400, C, H, W)
    vector = latent.attribute_vector(model, faces, attrs[:, names.index("Smiling")])
    smiles = latent.shift_along(model, faces[:8], vector)     # (8 * 5, C, H, W)

The 2-d scatter of validation codings coloured by label is the LatentScatter callback
(genmodels/callbacks/latent_scatter.py).
"""

import torch
import torch.nn.functional as F

from genmodels.errors import GenmodelsError

INTERPOLATIONS = ("lerp", "slerp")


def require(model, *methods: str) -> None:
    missing = [m for m in methods if not callable(getattr(model, m, None))]
    if missing:
        raise GenmodelsError(
            f"{type(model).__name__} has no {' or '.join(missing)}(): this latent-space tool "
            "needs a model with an encoder and a decoder (an autoencoder or a VAE)."
        )


def latent_dim(model) -> int:
    """The size of the model's codings: `model.latent_dim`, else found by encoding a blank
    image."""
    if isinstance(getattr(model, "latent_dim", None), int):
        return model.latent_dim
    require(model, "encode")
    with torch.no_grad():
        return model.encode(torch.zeros(1, *model.image_shape, device=model.device)).shape[1]


def _to_model(model, images: torch.Tensor) -> torch.Tensor:
    return images.to(device=model.device, dtype=torch.float32)


@torch.no_grad()
def prior_samples(model, n: int, generator: torch.Generator | None = None,
                  temperature: float = 1.0) -> torch.Tensor:
    """n images decoded from codings drawn from N(0, temperature^2 I) (a CPU generator
    seeds them). Models without `decode` fall back to their own `sample` (temperature 1)."""
    if not callable(getattr(model, "decode", None)):
        if temperature != 1.0:
            raise GenmodelsError(f"{type(model).__name__} has no decode(): it can only sample "
                                 f"at temperature 1.0, got {temperature}.")
        return model.sample(n, generator=generator)
    z = torch.randn(n, latent_dim(model), generator=generator).to(model.device)
    return model.decode(temperature * z)


def grid_values(n: int, span: float, quantiles: bool) -> torch.Tensor:
    """n coordinates per axis: evenly spaced in [-span, span], or (quantiles) at the normal
    quantiles (i + 1/2) / n, so that every cell of the grid holds equal prior probability."""
    if quantiles:
        probabilities = (torch.arange(n, dtype=torch.float64) + 0.5) / n
        return torch.distributions.Normal(0.0, 1.0).icdf(probabilities).float()
    return torch.linspace(-span, span, n)


@torch.no_grad()
def manifold(model, n: int = 20, span: float = 3.0, quantiles: bool = False) -> torch.Tensor:
    """The decoded latent plane of a 2-d model: (n*n, C, H, W) images in rows (top row =
    largest z2) and columns (left column = smallest z1), as a scatter plot of the codings
    would be drawn. quantiles=True places the points at normal quantiles (Kingma &
    Welling, 2014, fig. 4) instead of evenly over [-span, span]."""
    require(model, "decode")
    if (dim := latent_dim(model)) != 2:
        raise GenmodelsError(f"The manifold needs a 2-d latent space; this model's has {dim} "
                             "dimensions (use e.g. model=conv_vae or model.latent_dim=2).")
    if n < 2:
        raise GenmodelsError(f"The manifold needs n >= 2 points per axis, got {n}.")
    values = grid_values(n, span, quantiles)
    z1 = values.repeat(n)                        # columns: left to right
    z2 = values.flip(0).repeat_interleave(n)     # rows: top to bottom
    return model.decode(torch.stack([z1, z2], dim=1).to(model.device))


@torch.no_grad()
def semantic_interpolation(model, rows: int, cols: int, small_grid: tuple[int, int] = (3, 3),
                           generator: torch.Generator | None = None,
                           **decode_options) -> torch.Tensor:
    """Draw a small grid (e.g. 3x3) of random codings, upsample it bilinearly to rows x cols
    and decode: (rows*cols, C, H, W) images that morph smoothly between the random draws,
    which sit at the grid's corners and along its edges (align_corners). `decode_options`
    go to the model's decode (a conditional model's `labels`: one class for the grid)."""
    require(model, "decode")
    small_rows, small_cols = small_grid
    if min(small_rows, small_cols) < 2 or rows < small_rows or cols < small_cols:
        raise GenmodelsError(f"semantic_interpolation needs a small_grid of at least 2x2, no "
                             f"larger than rows x cols; got {tuple(small_grid)} for "
                             f"{rows}x{cols}.")
    dim = latent_dim(model)
    corners = torch.randn(1, dim, small_rows, small_cols, generator=generator)
    grid = F.interpolate(corners, size=(rows, cols), mode="bilinear", align_corners=True)
    return model.decode(grid[0].flatten(1).T.contiguous().to(model.device), **decode_options)


def slerp(z_a: torch.Tensor, z_b: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Spherical interpolation (Shoemake, 1985; White, 2016 for latent spaces): follows the
    great circle, keeping points at the norms typical of a high-dimensional Gaussian."""
    a, b = z_a / z_a.norm(), z_b / z_b.norm()
    omega = torch.arccos((a * b).sum().clamp(-1.0, 1.0))
    if omega.abs() < 1e-4:  # (nearly) parallel: the great circle is the line
        return torch.lerp(z_a, z_b, t[:, None])
    sin = torch.sin(omega)
    return (torch.sin((1 - t) * omega) / sin)[:, None] * z_a + \
        (torch.sin(t * omega) / sin)[:, None] * z_b


@torch.no_grad()
def interpolate(model, x_a: torch.Tensor, x_b: torch.Tensor, steps: int = 10,
                method: str = "lerp") -> torch.Tensor:
    """Encode two images (C, H, W), decode `steps` points on the path between their codings
    (lerp: straight line; slerp: great circle): (steps, C, H, W), from x_a's to x_b's.
    Two batches (N, C, H, W) give N such paths, pair by pair: (N * steps, C, H, W)."""
    require(model, "encode", "decode")
    if x_a.shape != x_b.shape or x_a.dim() not in (3, 4):
        raise GenmodelsError(f"interpolate takes two images (C, H, W) or two batches of them "
                             f"of one shape, got {tuple(x_a.shape)} and {tuple(x_b.shape)}.")
    if x_a.dim() == 4:
        return torch.cat([interpolate(model, a, b, steps, method)
                          for a, b in zip(x_a, x_b, strict=True)])
    z_a, z_b = model.encode(_to_model(model, torch.stack([x_a, x_b])))
    return interpolate_codings(model, z_a, z_b, steps, method)


@torch.no_grad()
def interpolate_codings(model, z_a: torch.Tensor, z_b: torch.Tensor, steps: int = 10,
                        method: str = "lerp", **decode_options) -> torch.Tensor:
    """Decode `steps` points on the path between two codings (latent_dim,), e.g. two prior
    draws: (steps, C, H, W), from z_a's image to z_b's. `decode_options` go to the model's
    decode (a conditional GAN's `labels`)."""
    require(model, "decode")
    if method not in INTERPOLATIONS:
        raise GenmodelsError(f"Unknown interpolation {method!r}; valid choices: "
                             f"{INTERPOLATIONS}.")
    if steps < 2:
        raise GenmodelsError(f"interpolate needs steps >= 2, got {steps}.")
    z_a, z_b = z_a.to(model.device), z_b.to(model.device)
    t = torch.linspace(0, 1, steps, device=z_a.device)
    if method == "slerp":
        z = slerp(z_a, z_b, t)
    else:
        z = torch.lerp(z_a, z_b, t[:, None])
    return model.decode(z, **decode_options)


@torch.no_grad()
def encode_all(model, images: torch.Tensor, batch_size: int = 500) -> torch.Tensor:
    """Codings of many images, encoded in batches."""
    require(model, "encode")
    return torch.cat([model.encode(_to_model(model, x)) for x in images.split(batch_size)])


def top_activating(codings: torch.Tensor, per_unit: int, max_units: int = 100) -> torch.Tensor:
    """Indices (units, per_unit) of the images whose coding is highest in each coding unit
    (the first `max_units` units), highest first: "the images that most activate each
    neuron in the coding layer" (Geron, ch. 17, exercises)."""
    codings = codings.flatten(1)[:, :max_units].float()
    per_unit = min(per_unit, len(codings))
    return codings.topk(per_unit, dim=0).indices.T


@torch.no_grad()
def attribute_vector(model, images: torch.Tensor, has_attribute: torch.Tensor,
                     batch_size: int = 500) -> torch.Tensor:
    """Mean coding of the images with an attribute minus that of the images without it
    (e.g. CelebA's `dm.attributes["train"][:, dm.attribute_names.index("Smiling")]`, or
    `labels == 3` on a labelled dataset). Returns a (latent_dim,) vector."""
    has_attribute = torch.as_tensor(has_attribute).bool().flatten()
    if len(has_attribute) != len(images):
        raise GenmodelsError(f"has_attribute has {len(has_attribute)} entries for "
                             f"{len(images)} images.")
    if has_attribute.all() or not has_attribute.any():
        raise GenmodelsError("attribute_vector needs images both with and without the "
                             f"attribute; got {int(has_attribute.sum())} of {len(images)} with.")
    codings = encode_all(model, images, batch_size)
    has_attribute = has_attribute.to(codings.device)
    return codings[has_attribute].mean(0) - codings[~has_attribute].mean(0)


@torch.no_grad()
def shift_along(model, x: torch.Tensor, vector: torch.Tensor,
                multiples: tuple[float, ...] = (-2, -1, 0, 1, 2)) -> torch.Tensor:
    """Decode each image's coding plus each multiple of `vector`: (len(x) * len(multiples),
    C, H, W), one row of len(multiples) images per input (multiple 0: its reconstruction)."""
    require(model, "encode", "decode")
    z = model.encode(_to_model(model, x))
    vector = vector.to(z.device).flatten()
    if vector.numel() != z.shape[1]:
        raise GenmodelsError(f"The vector has {vector.numel()} dimensions, the codings "
                             f"{z.shape[1]}.")
    steps = torch.as_tensor(multiples, dtype=z.dtype, device=z.device)
    shifted = z[:, None] + steps[None, :, None] * vector
    return model.decode(shifted.flatten(0, 1))
