"""Datasets as in-memory LightningDataModules."""

import importlib

# Each name's module, imported on first use: genmodels.data.downloads serves train.py's
# check of the data before the training machinery (Lightning) loads.
_MODULES = {
    "InMemoryImageDataModule": "datamodule", "TensorBatchLoader": "datamodule",
    "prepare_images": "datamodule",
    "CelebADataModule": "datasets", "CIFAR10DataModule": "datasets",
    "DigitsDataModule": "datasets", "FashionMNISTDataModule": "datasets",
    "IdxDataModule": "datasets", "ImageFolderDataModule": "datasets",
    "MNISTDataModule": "datasets", "write_idx": "datasets",
    "StackedMNISTDataModule": "stacked_mnist",
}
__all__ = sorted(_MODULES)


def __getattr__(name: str):
    if name not in _MODULES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_MODULES[name]}"), name)
