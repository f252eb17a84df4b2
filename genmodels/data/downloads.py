"""The datasets torchvision downloads: opening them, and one sentence when they are neither
in data_dir nor downloadable. Free of Lightning, so that train.py can check the data
(`check_data_available`) before it loads the training machinery: a missing dataset is
reported in seconds, not after every import."""

from dataclasses import dataclass, field
from pathlib import Path

from genmodels.errors import GenmodelsError
from genmodels.files import user_path

IDX_HINT = ("; IDX files kept under other names load with dataset=idx "
            "dataset.images=<...-images-idx3-ubyte[.gz]> "
            "dataset.labels=<...-labels-idx1-ubyte[.gz]>")


@dataclass(frozen=True)
class Download:
    """A torchvision dataset: its class, the files a user can put in data_dir instead of
    downloading, and the keyword arguments of each split `prepare` opens."""

    name: str  # the dataset= choice
    torchvision_class: str
    expected_files: str
    idx_hint: str = ""  # other files of the same format that dataset=idx reads
    splits: tuple[dict, ...] = field(default=({"train": True}, {"train": False}))

    def open(self, data_dir: str, download: bool = False, **split):
        import torchvision  # the first import of torch: kept out of `--help`

        dataset_class = getattr(torchvision.datasets, self.torchvision_class)
        try:
            return dataset_class(data_dir, download=download, **split)
        except (RuntimeError, OSError) as error:
            raise GenmodelsError(self.missing_message(error, download, data_dir)) from None

    def prepare(self, data_dir: str, download: bool) -> None:
        """Every split in data_dir, downloaded where missing (and `download`)."""
        for split in self.splits:
            self.open(data_dir, download, **split)

    def missing_message(self, error: Exception, download: bool, data_dir: str) -> str:
        # torchvision's message is "Error downloading <file>:", then each mirror tried
        # and its error: the first line and the last error say what happened.
        lines = [line.strip() for line in str(error).strip().splitlines() if line.strip()]
        reason = " ".join(dict.fromkeys([lines[0], lines[-1]])) if lines else repr(error)
        reason = reason if download else "dataset.download=false"
        return (
            f"The {self.name} dataset is not in {Path(data_dir).resolve()} and could not "
            f"be downloaded ({reason}). Put {self.expected_files} there, or point "
            f"dataset.data_dir to the folder that holds them{self.idx_hint}."
        )


MNIST = Download("mnist", "MNIST", "MNIST/raw/ with train-images-idx3-ubyte, "
                 "train-labels-idx1-ubyte, t10k-images-idx3-ubyte and t10k-labels-idx1-ubyte "
                 "(unpacked)", IDX_HINT)
FASHION = Download("fashion", "FashionMNIST", "FashionMNIST/raw/ with "
                   "train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte "
                   "and t10k-labels-idx1-ubyte (unpacked)", IDX_HINT)
CIFAR10 = Download("cifar10", "CIFAR10",
                   "cifar-10-batches-py/ (unpacked from cifar-10-python.tar.gz)")
CELEBA = Download("celeba", "CelebA", "celeba/ with img_align_celeba/ (the JPEG files), "
                  "list_attr_celeba.txt, identity_CelebA.txt, list_bbox_celeba.txt, "
                  "list_landmarks_align_celeba.txt and list_eval_partition.txt",
                  splits=({"split": "train", "target_type": "attr"},))
# By the class name of the data module a dataset config's _target_ names.
DOWNLOADS = {"MNISTDataModule": MNIST, "FashionMNISTDataModule": FASHION,
             "CIFAR10DataModule": CIFAR10, "CelebADataModule": CELEBA}


def check_data_available(dataset_cfg) -> None:
    """For a dataset torchvision downloads (by the config's `_target_`): its files are in
    data_dir, or are downloaded now; else one sentence saying where to put them."""
    target = str(dataset_cfg.get("_target_") or "")
    download = DOWNLOADS.get(target.rsplit(".", 1)[-1]) if target.startswith(
        "genmodels.data") else None
    if download is not None:
        download.prepare(user_path(str(dataset_cfg.get("data_dir", "data"))),
                         bool(dataset_cfg.get("download", True)))
