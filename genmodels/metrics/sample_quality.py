"""Sample quality in the feature space of the project's own classifier, and mode coverage.

The names say which features were used: `fd_classifier` is the Frechet distance and
`kid_classifier` the kernel distance in the classifier's feature space, NOT the Inception
FID/KID of published papers (those are `fid_inception`, `kid_inception`, see
`genmodels.metrics.inception`); values are only comparable between runs measured with
the same cached classifier.

The measurements are local: under DDP, torchmetrics would otherwise gather every rank's
images at `compute()`, a collective that hangs when only rank zero measures (the
sample-quality callback) and double-counts when every rank measures the same images.
"""

import torch
from torch import nn
from torchmetrics.image.fid import FrechetInceptionDistance
from torchmetrics.image.kid import KernelInceptionDistance

from genmodels.metrics.classifier import ChannelwiseClassifier, FeatureExtractor


def frechet_distance(feature: nn.Module, real: torch.Tensor, fake: torch.Tensor,
                     batch_size: int = 500) -> float:
    """Frechet distance between Gaussians fitted to feature(real) and feature(fake)
    (Heusel et al. 2017, eq. 6), by torchmetrics with `feature` as the extractor."""
    metric = FrechetInceptionDistance(feature=feature, sync_on_compute=False).to(real.device)
    update_in_batches(metric, real, fake, batch_size)
    return metric.compute().item()


def kernel_distance(feature: nn.Module, real: torch.Tensor, fake: torch.Tensor,
                    batch_size: int = 500, subsets: int = 100, subset_size: int = 1000,
                    seed: int = 0) -> tuple[float, float]:
    """Kernel (KID) distance, mean and std over random subsets: the unbiased MMD^2 with a
    cubic polynomial kernel (Binkowski et al. 2018), by torchmetrics."""
    subset_size = min(subset_size, len(real), len(fake))
    metric = KernelInceptionDistance(feature=feature, subsets=subsets, subset_size=subset_size,
                                     sync_on_compute=False).to(real.device)
    update_in_batches(metric, real, fake, batch_size)
    with torch.random.fork_rng(devices=[]):  # its subsets come from the global generator
        torch.manual_seed(seed)
        mean, std = metric.compute()
    return mean.item(), std.item()


def update_in_batches(metric, real: torch.Tensor, fake: torch.Tensor, batch_size: int):
    for images, is_real in ((real, True), (fake, False)):
        for start in range(0, len(images), batch_size):
            metric.update(images[start : start + batch_size], real=is_real)


def precision_recall_density_coverage(real_features: torch.Tensor, fake_features: torch.Tensor,
                                      k: int = 5) -> dict[str, float]:
    """Fidelity and diversity of samples from k-nearest-neighbour balls in feature space.

    precision/recall: Kynkaanniemi et al. 2019 ("Improved Precision and Recall Metric"),
    the fraction of fakes inside some real k-NN ball, and of reals inside some fake ball;
    density/coverage: Naeem et al. 2020 ("Reliable Fidelity and Diversity Metrics"), eq. 3
    and 4, less sensitive to outliers.
    """
    real, fake = real_features.double(), fake_features.double()
    real_radii = kth_neighbour_distance(real, k)
    fake_radii = kth_neighbour_distance(fake, k)
    real_to_fake = torch.cdist(real, fake)  # (n_real, n_fake)
    inside_real_balls = real_to_fake <= real_radii[:, None]
    return {
        "precision": inside_real_balls.any(0).double().mean().item(),
        "recall": (real_to_fake <= fake_radii[None, :]).any(1).double().mean().item(),
        "density": (inside_real_balls.double().sum(0) / k).mean().item(),
        "coverage": (real_to_fake.min(1).values <= real_radii).double().mean().item(),
    }


def kth_neighbour_distance(features: torch.Tensor, k: int) -> torch.Tensor:
    """Distance from each point to its k-th nearest other point."""
    distances = torch.cdist(features, features)
    return distances.kthvalue(k + 1, dim=1).values  # +1: the point itself is at distance 0


def mode_coverage(predicted: torch.Tensor, num_classes: int,
                  reference: torch.Tensor | None = None) -> dict[str, float]:
    """How many classes (modes) the generated images cover, and how far their class
    histogram is from the reference one.

    predicted: the classifier's class for each generated image. reference: class labels of
    real images (None: the uniform distribution, as in Stacked MNIST, Metz et al. 2017).
    `kl_to_real_classes` = KL(generated || reference) in nats; classes the reference never
    shows get a pseudo-count of one half so that it stays finite.
    """
    counts = torch.bincount(predicted.cpu(), minlength=num_classes).double()
    generated = counts / counts.sum()
    if reference is None:
        target = torch.full((num_classes,), 1.0 / num_classes, dtype=torch.double)
    else:
        reference_counts = torch.bincount(reference.cpu(), minlength=num_classes).double()
        target = reference_counts.clamp(min=0.5)
        target = target / target.sum()
    present = generated > 0
    kl = (generated[present] * (generated[present] / target[present]).log()).sum().item()
    return {"modes_covered": int(present.sum()), "kl_to_real_classes": kl,
            "num_modes": num_classes}


def classifier_metrics(classifier, real: torch.Tensor, fake: torch.Tensor,
                       real_labels: torch.Tensor | None = None, k: int = 5,
                       seed: int = 0) -> dict[str, float]:
    """All classifier-based metrics of uint8 fake images against uint8 real images.

    Precision/recall/density/coverage use at most 5,000 images of each kind (their cost
    grows with the square of the count).
    """
    classifier = classifier.to(real.device).eval()
    feature = FeatureExtractor(classifier)
    kid_mean, kid_std = kernel_distance(feature, real, fake, seed=seed)
    metrics = {"fd_classifier": frechet_distance(feature, real, fake),
               "kid_classifier": kid_mean, "kid_classifier_std": kid_std}
    with torch.no_grad():
        real_features = batched(feature, real[:5000])
        fake_features = batched(feature, fake[:5000])
    metrics |= precision_recall_density_coverage(real_features, fake_features, k=k)
    stacked = isinstance(classifier, ChannelwiseClassifier)  # 1000 equally likely modes
    if real_labels is not None or stacked:
        coverage = mode_coverage(classifier.predict(fake), classifier.num_classes,
                                 reference=None if stacked else real_labels)
        if stacked:
            coverage["kl_to_uniform_modes"] = coverage.pop("kl_to_real_classes")
        metrics |= coverage
    return metrics


def batched(function, images: torch.Tensor, batch_size: int = 500) -> torch.Tensor:
    return torch.cat([function(images[i : i + batch_size])
                      for i in range(0, len(images), batch_size)])
