"""Every sample-based measurement of one model at once, as `evaluate.py` and the
SampleQuality callback report them."""

import inspect

import torch

from genmodels.metrics.classifier import accuracy
from genmodels.metrics.sample_quality import classifier_metrics
from genmodels.sampling import from_uint8, sample_images


def measured_samples(model, num_samples: int, seed: int = 0, temperature: float = 1.0,
                     ema: bool | None = None, progress: bool = False) -> torch.Tensor:
    """The uint8 samples `measure` scores, drawn in eval mode and reproducible from `seed`:
    a conditional model's are of every class equally often (0, 1, ..., in turn), so the
    class accuracy covers all. Drawn once, they can feed other metrics too (evaluate.py's
    Inception ones)."""
    was_training = model.training
    model.eval()
    labels = list(range(model.num_classes)) if is_conditional(model) else None
    try:
        return sample_images(model, num_samples, seed=seed, labels=labels,
                             temperature=temperature, ema=ema, progress=progress)
    finally:
        model.train(was_training)


def is_conditional(model) -> bool:
    """Whether `model.sample` draws images of the classes it is given."""
    return ((getattr(model, "num_classes", None) or 0) > 0
            and "labels" in inspect.signature(model.sample).parameters)


@torch.no_grad()
def measure(model, classifier, real: torch.Tensor, real_labels: torch.Tensor | None,
            num_samples: int, seed: int = 0, temperature: float = 1.0,
            ema: bool | None = None, progress: bool = False,
            samples: torch.Tensor | None = None) -> dict[str, float]:
    """Sample-based metrics of `model` against uint8 real images (and their labels);
    `progress`: a progress bar while sampling. `samples`: the images to score, as
    `measured_samples` draws them with these options (None: drawn here)."""
    if samples is None:
        samples = measured_samples(model, num_samples, seed=seed, temperature=temperature,
                                   ema=ema, progress=progress)
    was_training = model.training
    model.eval()
    num_classes = getattr(model, "num_classes", None) or 0
    conditional = is_conditional(model)
    fake = samples.to(real.device)
    metrics = classifier_metrics(classifier, real, fake, real_labels, seed=seed)
    if real_labels is not None:
        metrics["classifier_accuracy_real"] = accuracy(classifier, real, real_labels)
    if conditional:
        requested = torch.arange(len(fake), device=real.device) % num_classes
        correct = (classifier.predict(fake) == requested).float()
        metrics["conditional_accuracy"] = correct.mean().item()
        for c in range(num_classes):
            metrics[f"conditional_accuracy_class{c}"] = correct[requested == c].mean().item()
    if hasattr(model, "reconstruct"):
        metrics["reconstruction_mse"] = reconstruction_mse(model, real)
    model.train(was_training)
    return metrics


def reconstruction_mse(model, images: torch.Tensor, batch_size: int = 500) -> float:
    """Mean squared error per pixel between uint8 images and their reconstructions,
    both mapped to [0, 1]."""
    total = 0.0
    for batch in images.split(batch_size):
        x = from_uint8(model, batch)
        x_unit = model.to_unit_range(x)
        total += (model.to_unit_range(model.reconstruct(x)) - x_unit).square().sum().item()
    return total / images.numel()
