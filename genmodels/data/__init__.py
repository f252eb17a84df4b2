"""Datasets as in-memory LightningDataModules."""

from genmodels.data.datamodule import InMemoryImageDataModule, TensorBatchLoader, prepare_images
from genmodels.data.datasets import (
    CelebADataModule,
    CIFAR10DataModule,
    DigitsDataModule,
    FashionMNISTDataModule,
    IdxDataModule,
    ImageFolderDataModule,
    MNISTDataModule,
    write_idx,
)
from genmodels.data.stacked_mnist import StackedMNISTDataModule

__all__ = ["CIFAR10DataModule", "CelebADataModule", "DigitsDataModule", "FashionMNISTDataModule",
           "IdxDataModule", "ImageFolderDataModule", "InMemoryImageDataModule",
           "MNISTDataModule", "StackedMNISTDataModule", "TensorBatchLoader", "prepare_images",
           "write_idx"]
