"""A small CNN classifier trained on the dataset itself: the offline feature extractor.

Inception-based FID needs downloaded ImageNet weights and measures 299x299 natural-image
features; for 28x28 digits a classifier trained on the dataset's own training split is
both available offline and more sensitive (as in "Are GANs Created Equal?", Lucic et al.
2018, and the Stacked MNIST protocol of Metz et al. 2017). Its penultimate activations
are the features for `fd_classifier`, `kid_classifier`, precision/recall; its predictions
give the class histogram of generated images. It is trained once and cached on disk,
keyed by the training images themselves.
"""

import hashlib
import logging
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from genmodels.errors import GenmodelsError
from genmodels.files import write_atomically

log = logging.getLogger(__name__)

# Part of the cache key: bump it when FeatureClassifier or its training changes.
CLASSIFIER_VERSION = 2


class FeatureClassifier(nn.Module):
    """Three conv blocks, pooling to 4x4, a `feature_dim` hidden layer, logits.

    Takes uint8 images (N, channels, H, W) of any size (what the datasets and the
    torchmetrics image metrics pass around); `features` are the post-ReLU penultimate
    activations.
    """

    def __init__(self, channels: int, num_classes: int, feature_dim: int = 128):
        super().__init__()
        self.channels, self.num_classes = channels, num_classes
        self.num_features = feature_dim  # read by torchmetrics for a custom `feature`

        def block(c_in, c_out):
            return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1), nn.BatchNorm2d(c_out),
                                 nn.ReLU(), nn.MaxPool2d(2, ceil_mode=True))

        # A 4x4 map rather than global pooling keeps where strokes are: it learns digits
        # in 2 epochs instead of 10.
        self.body = nn.Sequential(block(channels, 32), block(32, 64), block(64, 128),
                                  nn.AdaptiveAvgPool2d(4), nn.Flatten(),
                                  nn.Linear(128 * 16, feature_dim), nn.ReLU())
        self.head = nn.Linear(feature_dim, num_classes)

    def features(self, images: torch.Tensor) -> torch.Tensor:
        return self.body(images.float() / 255)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(images))

    @torch.no_grad()
    def predict(self, images: torch.Tensor, batch_size: int = 500) -> torch.Tensor:
        """Predicted class of each uint8 image."""
        return torch.cat([self(images[i : i + batch_size]).argmax(1)
                          for i in range(0, len(images), batch_size)])


class FeatureExtractor(nn.Module):
    """The classifier's features, as the `feature` module torchmetrics' FID/KID call."""

    def __init__(self, classifier: FeatureClassifier):
        super().__init__()
        self.classifier = classifier
        self.num_features = classifier.num_features

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.classifier.features(images)


class ChannelwiseClassifier(nn.Module):
    """Stacked MNIST: one digit classifier applied to each of the 3 channels.

    Features are the per-channel features side by side; the predicted mode is
    100 * red digit + 10 * green digit + blue digit (1000 modes).
    """

    def __init__(self, digit_classifier: FeatureClassifier, channels: int = 3):
        super().__init__()
        self.digit_classifier, self.channels = digit_classifier, channels
        self.num_classes = digit_classifier.num_classes ** channels
        self.num_features = digit_classifier.num_features * channels

    def features(self, images: torch.Tensor) -> torch.Tensor:
        n = len(images)
        per_channel = self.digit_classifier.features(images.flatten(0, 1).unsqueeze(1))
        return per_channel.view(n, -1)

    @torch.no_grad()
    def predict(self, images: torch.Tensor, batch_size: int = 500) -> torch.Tensor:
        digits = self.digit_classifier.predict(images.flatten(0, 1).unsqueeze(1), batch_size)
        digits = digits.view(len(images), self.channels)
        base = self.digit_classifier.num_classes
        weights = base ** torch.arange(self.channels - 1, -1, -1, device=digits.device)
        return (digits * weights).sum(1)


def train_classifier(images: torch.Tensor, labels: torch.Tensor, num_classes: int,
                     epochs: int = 5, batch_size: int = 64, lr: float = 3e-3,
                     seed: int = 0, progress: bool = False) -> FeatureClassifier:
    """Fit a FeatureClassifier to uint8 images with cross-entropy (Adam, light random
    shifts so that the features do not depend on exact pixel positions); `progress`
    shows a bar (on stderr) over its steps.

    Gradients are switched on explicitly: the training-time callback calls this from
    inside Lightning's validation loop, which runs in inference mode."""
    with torch.inference_mode(False), torch.enable_grad():
        return _train_classifier(images.clone(), labels.clone(), num_classes, epochs,
                                 batch_size, lr, seed, progress)


def _train_classifier(images, labels, num_classes, epochs, batch_size, lr, seed, progress):
    torch.manual_seed(seed)
    classifier = FeatureClassifier(images.shape[1], num_classes).to(images.device)
    optimizer = torch.optim.Adam(classifier.parameters(), lr=lr)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=lr, total_steps=max(1, epochs * (len(images) // batch_size or 1)))
    generator = torch.Generator().manual_seed(seed)
    classifier.train()
    starts = range(0, max(1, len(images) - batch_size + 1), batch_size)
    bar = tqdm(total=epochs * len(starts), desc="Training the feature classifier",
               unit="step", disable=not progress, leave=False)
    for _ in range(epochs):
        order = torch.randperm(len(images), generator=generator).to(images.device)
        for start in starts:
            bar.update()
            index = order[start : start + batch_size]
            x = random_shift(images[index], max_shift=2, generator=generator)
            loss = F.cross_entropy(classifier(x), labels[index])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
    bar.close()
    return classifier.eval()


def random_shift(images: torch.Tensor, max_shift: int, generator: torch.Generator):
    """Translate the whole batch by one random (dy, dx) of at most max_shift pixels."""
    dy, dx = torch.randint(-max_shift, max_shift + 1, (2,), generator=generator).tolist()
    return torch.roll(images, shifts=(dy, dx), dims=(2, 3))


def labelled_training_images(datamodule) -> tuple[torch.Tensor, torch.Tensor, int]:
    """The training split's uint8 images and labels the classifier learns from.

    For Stacked MNIST (`per_channel_classes`), each channel is one digit image.
    """
    images, labels = (t.cpu() for t in datamodule.splits["train"])
    per_channel = getattr(datamodule, "per_channel_classes", 0)
    if per_channel:
        channels = images.shape[1]
        base = per_channel ** torch.arange(channels - 1, -1, -1)
        digits = (labels[:, None] // base) % per_channel
        return images.flatten(0, 1).unsqueeze(1), digits.flatten(), per_channel
    if not datamodule.num_classes or (labels < 0).any():
        raise GenmodelsError(
            f"The {datamodule.name} dataset has no class labels, so no classifier can be "
            "trained for the sample-quality metrics; use a labelled dataset (digits, mnist, "
            "fashion, cifar10, idx with dataset.labels, stacked_mnist, folder with one "
            "subfolder per class)."
        )
    return images, labels, datamodule.num_classes


def classifier_for(datamodule, cache_dir: str | Path, epochs: int = 5, seed: int = 0,
                   progress: bool = False):
    """The feature classifier of a (set up) datamodule: loaded from `cache_dir`, or
    trained on its training split (with a progress bar if `progress`) and cached there.
    Returns a FeatureClassifier, or a ChannelwiseClassifier for Stacked MNIST."""
    images, labels, num_classes = labelled_training_images(datamodule)
    digest = hashlib.sha1()
    for tensor in (images, labels):
        digest.update(tensor.contiguous().numpy().tobytes())
    digest.update(f"v{CLASSIFIER_VERSION} {epochs} {seed}".encode())
    channels, size = images.shape[1], images.shape[-1]
    path = (Path(cache_dir).expanduser() /
            f"{datamodule.name}_{size}px_{channels}ch_{digest.hexdigest()[:12]}.pt")
    if path.exists():
        state = torch.load(path, map_location="cpu", weights_only=True)
        classifier = FeatureClassifier(channels, num_classes)
        classifier.load_state_dict(state)
        classifier.eval()
    else:
        log.info("Training the feature classifier on %d %s images (%d epochs); it is cached "
                 "in %s", len(images), datamodule.name, epochs, path)
        classifier = train_classifier(images, labels, num_classes, epochs=epochs, seed=seed,
                                      progress=progress)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            # All or nothing: a concurrent reader never sees half a file.
            write_atomically(path, lambda file: torch.save(classifier.state_dict(), file))
        except OSError as error:  # a read-only cache or HOME: measure all the same
            log.warning("Could not cache the feature classifier in %s (%s): it is trained "
                        "again next time; give classifier_cache=<a folder you can write>.",
                        path.parent, error.strerror)
    if getattr(datamodule, "per_channel_classes", 0):
        return ChannelwiseClassifier(classifier, datamodule.channels).eval()
    return classifier


def accuracy(classifier, images: torch.Tensor, labels: torch.Tensor) -> float:
    """Fraction of uint8 images the classifier labels correctly."""
    return (classifier.predict(images) == labels).float().mean().item()
