"""One LightningDataModule per dataset; each only says how to read its images."""

import gzip
import math
import struct
import zlib
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from genmodels.data.datamodule import InMemoryImageDataModule, prepare_images
from genmodels.data.downloads import CELEBA, CIFAR10, FASHION, MNIST, Download
from genmodels.errors import GenmodelsError
from genmodels.files import user_path, write_atomically


class DigitsDataModule(InMemoryImageDataModule):
    """scikit-learn's bundled 8x8 handwritten digits (1,797 images, 10 classes): offline."""

    name = "digits"
    num_classes = 10

    def load(self):
        from sklearn.datasets import load_digits

        digits = load_digits()
        # Grey levels run 0..16 in this dataset.
        images = torch.from_numpy(np.rint(digits.images * (255 / 16))).to(torch.uint8)
        labels = torch.from_numpy(digits.target).long()
        return {"train": (prepare_images(images, self.image_size, self.channels), labels)}


def read_idx(path: str | Path) -> torch.Tensor:
    """Read an IDX file (the MNIST format, optionally gzipped) of unsigned bytes."""
    path = Path(path).expanduser()
    try:
        with (gzip.open if path.suffix == ".gz" else open)(path, "rb") as file:
            data = file.read()
    except (OSError, EOFError, zlib.error) as error:  # EOFError: a .gz cut short
        reason = getattr(error, "strerror", None) or error
        raise GenmodelsError(f"Cannot read IDX file {path}: {reason}.") from None
    if len(data) < 4 or data[:3] != b"\x00\x00\x08":
        raise GenmodelsError(f"{path} is not an IDX file of unsigned bytes.")
    ndim = data[3]
    header = 4 + 4 * ndim
    shape = struct.unpack(f">{ndim}I", data[4:header]) if len(data) >= header else None
    if shape is None or len(data) - header != math.prod(shape):
        announced = f"{math.prod(shape):,} values {shape}" if shape else f"a {ndim}-d shape"
        raise GenmodelsError(
            f"{path} is truncated or damaged: its header announces {announced} but it "
            f"holds {max(len(data) - header, 0):,} bytes of data."
        )
    return torch.frombuffer(bytearray(data[header:]), dtype=torch.uint8).view(shape)


def write_idx(path: str | Path, values: torch.Tensor | np.ndarray) -> None:
    """Write unsigned bytes (images (N, H, W) or labels (N,)) as an IDX file, gzipped when
    `path` ends in .gz: the files `read_idx` and dataset=idx read."""
    values = torch.as_tensor(values).to(torch.uint8)
    data = (struct.pack(">HBB", 0, 0x08, values.dim())
            + struct.pack(f">{values.dim()}I", *values.shape) + values.numpy().tobytes())
    with (gzip.open if Path(path).suffix == ".gz" else open)(path, "wb") as file:
        file.write(data)


class IdxDataModule(InMemoryImageDataModule):
    """Images (and optionally labels) from IDX files, the format of MNIST, Fashion-MNIST,
    EMNIST and KMNIST: e.g. `images=t10k-images-idx3-ubyte.gz labels=t10k-labels-idx1-ubyte.gz`.
    Validation and test splits are held out by `val_fraction` and `test_fraction`."""

    name = "idx"

    def __init__(self, images: str | None = None, labels: str | None = None, **kwargs):
        super().__init__(**kwargs)
        self.images_file, self.labels_file = user_path(images), user_path(labels)

    def load(self):
        if not self.images_file:
            raise GenmodelsError("dataset=idx needs dataset.images=<path to an IDX image file>.")
        images = read_idx(self.images_file)
        if images.ndim not in (3, 4):  # (N, H, W) or (N, C, H, W)
            raise GenmodelsError(
                f"dataset.images={self.images_file} holds data of shape {tuple(images.shape)}, "
                "not images (count x height x width): is it a labels file (swapped with "
                "dataset.labels)?"
            )
        if self.labels_file:
            labels = read_idx(self.labels_file).long()
            if labels.ndim != 1:
                raise GenmodelsError(
                    f"dataset.labels={self.labels_file} holds data of shape "
                    f"{tuple(labels.shape)}, not one label per image: is it an images file "
                    "(swapped with dataset.images)?"
                )
            self.num_classes = int(labels.max()) + 1
        else:
            labels = torch.full((len(images),), -1, dtype=torch.long)
        if len(labels) != len(images):
            raise GenmodelsError(f"{self.labels_file} has {len(labels)} labels for "
                                 f"{len(images)} images in {self.images_file}.")
        return {"train": (prepare_images(images, self.image_size, self.channels), labels)}


class TorchvisionDataModule(InMemoryImageDataModule):
    """A dataset that torchvision downloads, with its official train and test splits."""

    source: Download  # the torchvision dataset, its files and their error message

    def prepare_data(self) -> None:
        # Downloads on the first process of each node only.
        self.source.prepare(self.data_dir, self.download)

    def open(self, train: bool):
        return self.source.open(self.data_dir, train=train)

    def load(self):
        splits = {}
        for split in ("train", "test"):
            dataset = self.open(train=split == "train")
            images = torch.as_tensor(dataset.data)
            if images.ndim == 4:  # (N, H, W, C) arrays, as CIFAR stores them
                images = images.permute(0, 3, 1, 2)
            labels = torch.as_tensor(dataset.targets).long()
            splits[split] = (prepare_images(images, self.image_size, self.channels), labels)
        return splits


class MNISTDataModule(TorchvisionDataModule):
    name, source, num_classes = "mnist", MNIST, 10


class FashionMNISTDataModule(TorchvisionDataModule):
    name, source, num_classes = "fashion", FASHION, 10


class CIFAR10DataModule(TorchvisionDataModule):
    name, source, num_classes = "cifar10", CIFAR10, 10


class CelebADataModule(TorchvisionDataModule):
    """Aligned CelebA faces (centre-cropped square, resized), official splits, 40 attributes.

    Decoding 200k JPEGs takes minutes, so the prepared tensors are cached next to the data.
    Labels are -1; the binary attribute table is `self.attributes[split]`, named by
    `self.attribute_names`.
    """

    name, source = "celeba", CELEBA
    official_splits = {"train": "train", "val": "valid", "test": "test"}

    def open(self, split: str):
        return self.source.open(self.data_dir, split=split, target_type="attr")

    def load(self):
        splits, self.attributes = {}, {}
        for split, official in self.official_splits.items():
            cache = (Path(self.data_dir) / "celeba" /
                     f"genmodels_{official}_{self.image_size}px_{self.channels}ch.pt")
            if not cache.exists():
                dataset = self.open(official)
                folder = Path(dataset.root) / dataset.base_folder / "img_align_celeba"
                images = torch.stack([
                    prepare_images(read_image(folder / name, self.channels)[None],
                                   self.image_size, self.channels)[0]
                    for name in dataset.filename
                ])
                data = {"images": images, "attributes": dataset.attr.bool(),
                        "names": [n for n in dataset.attr_names if n]}
                # Never half a cache.
                write_atomically(cache, lambda file, data=data: torch.save(data, file))
            data = torch.load(cache)
            self.attribute_names = data["names"]
            self.attributes[split] = data["attributes"]
            labels = torch.full((len(data["images"]),), -1, dtype=torch.long)
            splits[split] = (data["images"], labels)
        return splits


IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")


def read_image(path: Path, channels: int) -> torch.Tensor:
    """Decode one image file to a uint8 (C, H, W) tensor with `channels` channels."""
    try:
        with Image.open(path) as image:
            if image.mode.startswith(("I", "F")):  # 16/32-bit grey levels, e.g. 16-bit PNG
                image = grey_to_8_bit(image, path)
            array = np.asarray(image.convert("L" if channels == 1 else "RGB"))
    except (OSError, UnidentifiedImageError) as error:
        raise GenmodelsError(f"Cannot read image {path}: {error}") from None
    tensor = torch.from_numpy(array.copy())
    return tensor[None] if tensor.ndim == 2 else tensor.permute(2, 0, 1)


def grey_to_8_bit(image: Image.Image, path: Path) -> Image.Image:
    """A 16-bit grey image (Pillow modes I;16*, or I holding 0..65535) scaled to 8 bits,
    0..65535 -> 0..255. Pillow's own convert("L") clips such values at 255 instead, turning
    nearly every pixel white. (16-bit RGB needs nothing: Pillow reduces it to 8 bits.)"""
    values = np.asarray(image).astype(np.int64)
    if image.mode == "F" or values.min() < 0 or values.max() > 65535:
        raise GenmodelsError(
            f"Cannot read image {path}: its grey levels (Pillow mode {image.mode}) are not "
            f"8- or 16-bit integers; save it with 8 or 16 bits per channel."
        )
    return Image.fromarray(((values * 255 + 32767) // 65535).astype(np.uint8))


class ImageFolderDataModule(InMemoryImageDataModule):
    """The user's own images in `data_dir`: image files, optionally one subfolder per class.

    With subfolders, each is a class (sorted by name; files inside are found recursively)
    and images directly in `data_dir` get label -1. Without, every label is -1.
    """

    name = "folder"

    def load(self):
        if not self.data_dir:
            raise GenmodelsError("dataset=folder needs dataset.data_dir=<folder of images>.")
        root = Path(self.data_dir)
        if not root.is_dir():
            raise GenmodelsError(f"dataset.data_dir={self.data_dir!r} is not a folder.")
        self.class_names = sorted(p.name for p in root.iterdir()
                                  if p.is_dir() and not p.name.startswith("."))
        self.num_classes = len(self.class_names)
        files = [(p, -1) for p in sorted(root.iterdir()) if is_image_file(p)]
        for label, name in enumerate(self.class_names):
            files += [(p, label) for p in sorted((root / name).rglob("*")) if is_image_file(p)]
        if not files:
            raise GenmodelsError(
                f"No images in dataset.data_dir={self.data_dir!r}; expected files ending in "
                f"{', '.join(IMAGE_SUFFIXES)}, directly or in one subfolder per class."
            )
        images = torch.stack([
            prepare_images(read_image(path, self.channels)[None], self.image_size,
                           self.channels)[0]
            for path, _ in files
        ])
        labels = torch.tensor([label for _, label in files], dtype=torch.long)
        return {"train": (images, labels)}


def is_image_file(path: Path) -> bool:
    hidden = path.name.startswith(".")
    return path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES and not hidden
