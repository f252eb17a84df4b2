"""Stacked MNIST: three MNIST digits as the R, G, B channels of one image (1000 modes).

The standard mode-collapse benchmark (Metz et al., "Unrolled GANs", 2017; Srivastava et
al., "VEEGAN", 2017): a generator that covers the data makes all 1000 digit triples
about equally often. The mode of an image is 100 * red digit + 10 * green + blue, its
label here; `evaluate.py` counts the modes of generated images with a digit classifier
applied to each channel.
"""

import torch

from genmodels.data.datamodule import InMemoryImageDataModule
from genmodels.data.datasets import IdxDataModule, MNISTDataModule
from genmodels.errors import GenmodelsError

SOURCES = ("mnist", "idx")


def stack_digits(images: torch.Tensor, labels: torch.Tensor, count: int,
                 generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """`count` RGB images, each channel a random grey digit image of the source
    (N, 1, H, W); labels are the three digits read as one 3-digit number."""
    picks = torch.randint(len(images), (count, 3), generator=generator)
    stacked = images[picks, 0]  # (count, 3, H, W): channel c is image picks[:, c]
    digits = labels[picks]
    return stacked.contiguous(), digits[:, 0] * 100 + digits[:, 1] * 10 + digits[:, 2]


class StackedMNISTDataModule(InMemoryImageDataModule):
    """Stacked MNIST built from an MNIST-like source of grey digits with labels 0-9:
    `source=mnist` (torchvision files in data_dir) or `source=idx` (IDX files `images`
    and `labels`, for offline use). Each split of the source gives as many stacked images
    as it has digits (or `num_train`), drawn with the dataset's seed."""

    name = "stacked_mnist"
    num_classes = 1000
    per_channel_classes = 10  # the classifier learns single digits, applied per channel

    def __init__(self, source: str = "mnist", images: str | None = None,
                 labels: str | None = None, num_train: int | None = None, **kwargs):
        super().__init__(**kwargs)
        if source not in SOURCES:
            raise GenmodelsError(f"dataset.source={source!r}; valid choices: {SOURCES}.")
        if self.channels != 3:
            raise GenmodelsError(
                f"stacked_mnist images have 3 channels (one digit each), got "
                f"dataset.channels={self.channels}."
            )
        self.source, self.images_file, self.labels_file = source, images, labels
        self.num_train = num_train

    def source_datamodule(self) -> InMemoryImageDataModule:
        common = {"data_dir": self.data_dir, "image_size": self.image_size, "channels": 1}
        if self.source == "mnist":
            return MNISTDataModule(download=self.download, **common)
        if not self.labels_file:
            raise GenmodelsError("stacked_mnist with source=idx needs dataset.labels=<IDX "
                                 "label file>: the modes are the digits' labels.")
        return IdxDataModule(images=self.images_file, labels=self.labels_file, **common)

    def prepare_data(self) -> None:
        self.source_datamodule().prepare_data()

    def load(self):
        generator = torch.Generator().manual_seed(self.seed)
        splits = {}
        for split, (images, labels) in self.source_datamodule().load().items():
            count = self.num_train if split == "train" and self.num_train else len(images)
            splits[split] = stack_digits(images, labels, count, generator)
        return splits
