"""Sample-quality metrics, mode coverage, the feature classifier and Stacked MNIST."""

import math

import pytest
import torch
from torch import nn

from genmodels.data import DigitsDataModule, StackedMNISTDataModule, write_idx
from genmodels.errors import GenmodelsError
from genmodels.metrics.classifier import ChannelwiseClassifier, accuracy, classifier_for
from genmodels.metrics.inception import check_inception_available
from genmodels.metrics.sample_quality import (
    frechet_distance,
    kernel_distance,
    mode_coverage,
    precision_recall_density_coverage,
)


class Identity(nn.Module):
    """Features = the inputs themselves, so distances are known in closed form."""

    def __init__(self, num_features: int):
        super().__init__()
        self.num_features = num_features

    def forward(self, x):
        return x


def gaussian_features(n=2000, dim=8, seed=0):
    return torch.randn(n, dim, generator=torch.Generator().manual_seed(seed))


def test_frechet_distance_is_zero_to_itself_and_grows_with_a_shift():
    a, b = gaussian_features(seed=0), gaussian_features(seed=1)
    feature = Identity(8)
    assert frechet_distance(feature, a, a) == pytest.approx(0.0, abs=1e-3)
    distances = [frechet_distance(feature, a, b + shift) for shift in (0.0, 0.5, 1.0, 2.0)]
    assert distances == sorted(distances), distances
    # Equal covariances: the distance is |mean difference|^2 = 8 * shift^2.
    assert distances[2] == pytest.approx(8.0, rel=0.1)
    assert distances[3] == pytest.approx(32.0, rel=0.1)


def test_kernel_distance_is_about_zero_to_itself_and_grows_with_a_shift():
    a, b = gaussian_features(500, seed=0), gaussian_features(500, seed=1)
    same, _ = kernel_distance(Identity(8), a, b, subsets=10, subset_size=200)
    shifted, _ = kernel_distance(Identity(8), a, b + 1.0, subsets=10, subset_size=200)
    assert abs(same) < 0.05 and shifted > 1.0


def test_precision_recall_density_coverage_of_equal_and_disjoint_sets():
    a = gaussian_features(500)
    equal = precision_recall_density_coverage(a, a, k=5)
    # Each fake lies in its own real ball and in those of its k neighbours: (k + 1) / k.
    assert equal == pytest.approx({"precision": 1, "recall": 1, "density": 1.2, "coverage": 1})
    far = precision_recall_density_coverage(a, a + 100, k=5)
    assert far == {"precision": 0, "recall": 0, "density": 0, "coverage": 0}
    # Fakes collapsed onto one real point: fidelity stays, diversity is lost.
    collapsed = precision_recall_density_coverage(a, a[:1].expand(500, -1), k=5)
    assert collapsed["precision"] == 1
    assert collapsed["recall"] < 0.01 and collapsed["coverage"] < 0.05


def test_mode_coverage_counts_classes_and_kl_to_the_real_distribution():
    real = torch.arange(1000) % 10
    assert mode_coverage(real, 10, real) == pytest.approx(
        {"modes_covered": 10, "kl_to_real_classes": 0.0, "num_modes": 10})
    collapsed = mode_coverage(torch.full((1000,), 3), 10, real)
    assert collapsed["modes_covered"] == 1
    assert collapsed["kl_to_real_classes"] == pytest.approx(torch.log(torch.tensor(10.)).item())
    uniform = mode_coverage(torch.arange(2000) % 1000, 1000)  # Stacked MNIST: no reference
    assert uniform["modes_covered"] == 1000 and uniform["kl_to_real_classes"] < 1e-9


@pytest.fixture(scope="module")
def digits():
    datamodule = DigitsDataModule(seed=0)
    datamodule.setup()
    return datamodule


def test_classifier_is_trained_once_then_loaded_from_its_cache(digits, tmp_path, capsys):
    classifier = classifier_for(digits, tmp_path, epochs=2, progress=True)
    # evaluate.py shows its progress (it trained for a minute and more in silence)
    assert "Training the feature classifier" in capsys.readouterr().err
    (cached,) = tmp_path.iterdir()
    assert cached.name.startswith("digits_28px_1ch_") and cached.suffix == ".pt"
    images, labels = digits.splits["test"]
    trained_accuracy = accuracy(classifier, images, labels)
    assert trained_accuracy > 0.8  # digits are easy: its features must mean something
    mtime = cached.stat().st_mtime_ns
    again = classifier_for(digits, tmp_path, epochs=2)
    assert cached.stat().st_mtime_ns == mtime and list(tmp_path.iterdir()) == [cached]
    assert accuracy(again, images, labels) == trained_accuracy


def test_a_dataset_without_labels_cannot_train_the_classifier(digits, tmp_path):
    class Unlabelled(DigitsDataModule):
        name, num_classes = "unlabelled", 0

    datamodule = Unlabelled()
    datamodule.splits = {"train": (digits.splits["train"][0],
                                   torch.full((len(digits.splits["train"][0]),), -1))}
    with pytest.raises(GenmodelsError, match="no class labels"):
        classifier_for(datamodule, tmp_path)


@pytest.fixture(scope="module")
def digit_idx_files(tmp_path_factory, digits):
    """IDX files (MNIST format) of 600 of scikit-learn's digits, resized to 28x28."""
    root = tmp_path_factory.mktemp("idx")
    images, labels = digits.splits["train"]
    write_idx(root / "images.gz", images[:600, 0])
    write_idx(root / "labels.gz", labels[:600])
    return root / "images.gz", root / "labels.gz"


def test_stacked_mnist_stacks_three_digits_and_counts_its_modes(digit_idx_files, tmp_path):
    images_file, labels_file = digit_idx_files
    datamodule = StackedMNISTDataModule(source="idx", images=str(images_file),
                                        labels=str(labels_file), channels=3, seed=0)
    datamodule.setup()
    images, labels = datamodule.splits["train"]
    assert images.shape[1:] == (3, 28, 28) and images.dtype == torch.uint8
    assert labels.min() >= 0 and labels.max() < 1000 and len(labels.unique()) > 300
    # Channel c of an image is a source digit whose label is digit c of the 3-digit mode.
    from genmodels.data.datasets import read_idx

    source_label = {image.numpy().tobytes(): int(label)
                    for image, label in zip(read_idx(images_file), read_idx(labels_file),
                                            strict=True)}
    for c, digit in enumerate((labels // 100, labels // 10 % 10, labels % 10)):
        assert [source_label[x.numpy().tobytes()] for x in images[:50, c]] == digit[:50].tolist()

    classifier = classifier_for(datamodule, tmp_path, epochs=2)
    assert isinstance(classifier, ChannelwiseClassifier) and classifier.num_classes == 1000
    test_images, test_labels = datamodule.splits["test"]
    assert accuracy(classifier, test_images, test_labels) > 0.6  # all three digits right
    modes = classifier.predict(test_images)
    assert mode_coverage(modes, 1000)["modes_covered"] > 0.6 * len(test_labels.unique())
    collapsed = classifier.predict(test_images[:1].expand(50, -1, -1, -1))
    assert mode_coverage(collapsed, 1000)["modes_covered"] == 1


def test_stacked_mnist_rejects_grey_images_and_unknown_sources():
    with pytest.raises(GenmodelsError, match="3 channels"):
        StackedMNISTDataModule(channels=1)
    with pytest.raises(GenmodelsError, match="valid choices"):
        StackedMNISTDataModule(source="emnist", channels=3)


def test_inception_metrics_explain_missing_weights(tmp_path):
    with pytest.raises(GenmodelsError, match="is not a file.*Download the FID Inception"):
        check_inception_available(tmp_path / "missing.pth")
    weights = tmp_path / "weights.pth"
    weights.write_bytes(b"")
    try:
        import torch_fidelity  # noqa: F401
    except ModuleNotFoundError:
        with pytest.raises(GenmodelsError, match="pip install torch-fidelity"):
            check_inception_available(weights)
    else:
        assert check_inception_available(weights) == weights


class PixelDigitClassifier(nn.Module):
    """A 'digit classifier' that reads the digit off an image's top-left pixel, so the
    modes of stacked images are known exactly."""

    num_classes, num_features = 10, 4

    def features(self, images):
        return images[:, :, :2, :2].flatten(1).float()

    def predict(self, images, batch_size=500):
        return images[:, 0, 0, 0].long() % 10


def test_stacked_mnist_kl_to_uniform_modes_is_zero_for_all_modes_and_log_1000_for_one(
        monkeypatch):
    from genmodels.metrics import sample_quality
    from genmodels.metrics.sample_quality import classifier_metrics

    # KID over 1,000 images costs seconds and is tested above; it plays no part here.
    monkeypatch.setattr(sample_quality, "kernel_distance", lambda *args, **kwargs: (0.0, 0.0))
    classifier = ChannelwiseClassifier(PixelDigitClassifier())
    modes = torch.arange(1000)
    every_mode = torch.randint(0, 256, (1000, 3, 4, 4), generator=torch.Generator()
                               .manual_seed(0), dtype=torch.uint8)
    every_mode[:, :, 0, 0] = torch.stack([modes // 100, modes // 10 % 10, modes % 10], 1).byte()
    assert torch.equal(classifier.predict(every_mode), modes)
    uniform = classifier_metrics(classifier, every_mode, every_mode)
    assert uniform["modes_covered"] == 1000 and uniform["num_modes"] == 1000
    assert uniform["kl_to_uniform_modes"] == pytest.approx(0.0, abs=1e-9)
    assert "kl_to_real_classes" not in uniform  # Stacked MNIST compares to uniform modes
    one_mode = every_mode.clone()
    one_mode[:, :, 0, 0] = torch.tensor([3, 1, 4], dtype=torch.uint8)[:, None].T
    collapsed = classifier_metrics(classifier, every_mode, one_mode)
    assert collapsed["modes_covered"] == 1
    assert collapsed["kl_to_uniform_modes"] == pytest.approx(math.log(1000))
    half = torch.cat([every_mode[:500], every_mode[:500]])  # modes 0-499, twice each
    assert classifier_metrics(classifier, every_mode, half)["kl_to_uniform_modes"] == \
        pytest.approx(math.log(2))
