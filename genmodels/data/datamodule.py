"""In-memory image datasets: decoded once to uint8 tensors, batched by tensor indexing."""

import logging
import math
from collections.abc import Callable

import lightning as L
import torch
import torch.distributed as dist
import torchvision.transforms.v2.functional as TF

from genmodels.errors import GenmodelsError
from genmodels.files import user_path

log = logging.getLogger(__name__)


def prepare_images(images: torch.Tensor, image_size: int, channels: int) -> torch.Tensor:
    """uint8 (N, C, H, W) images -> uint8 (N, channels, image_size, image_size).

    Non-square images are resized on their short side, then centre-cropped.
    """
    if images.ndim == 3:
        images = images.unsqueeze(1)
    if images.shape[1] == 4:  # drop an alpha channel
        images = images[:, :3]
    if channels == 1 and images.shape[1] == 3:
        images = TF.rgb_to_grayscale(images)
    elif channels == 3 and images.shape[1] == 1:
        images = images.expand(-1, 3, -1, -1)
    height, width = images.shape[-2:]
    if (height, width) != (image_size, image_size):
        images = TF.resize(images, image_size, antialias=True)
        images = TF.center_crop(images, [image_size, image_size])
    return images.contiguous()


def split_off(images: torch.Tensor, labels: torch.Tensor, fraction: float, seed: int,
              ordered: bool = False):
    """Split off `fraction` of the examples, at random or (ordered) the last ones:
    returns (rest, held_out) pairs."""
    n_held_out = round(len(images) * fraction)
    if ordered:
        order = torch.arange(len(images)).roll(n_held_out)  # the last n first
    else:
        order = torch.randperm(len(images), generator=torch.Generator().manual_seed(seed))
    rest, held_out = order[n_held_out:], order[:n_held_out]
    return (images[rest], labels[rest]), (images[held_out], labels[held_out])


BINARIZE = (None, "dynamic", "static")


def stochastic_binarization(images: torch.Tensor, seed: int, chunk: int = 10000) -> torch.Tensor:
    """uint8 grey levels -> uint8 0/255, each pixel on with probability grey/255, from a
    seeded generator (the same binarization every run), in chunks to bound memory."""
    generator = torch.Generator().manual_seed(seed)
    return torch.cat([
        (torch.rand(part.shape, generator=generator) * 255 < part).to(torch.uint8) * 255
        for part in images.split(chunk)
    ]) if len(images) else images


class TensorBatchLoader:
    """Mini-batches cut from in-memory tensors by indexing: no per-sample Python work.

    Under DDP every rank takes its own slice of one shared permutation, as
    `DistributedSampler` would; training slices are equal-sized so the ranks stay in step.

    `fused` > 1 (speed.fused_batches) hands out `fused` consecutive batches of one pass as
    one concatenated batch, for models that take one optimizer step per batch inside it
    (genmodels/engine/fused_batches.py): the very batches, in the same order, fewer Lightning
    steps. The last of a pass holds whatever full batches are left.

    Resumable: Lightning saves `state_dict()` (which pass over the data, hence which
    permutation, and how far into it) in every checkpoint and hands it back to
    `load_state_dict()` on resume, so a run stopped mid-epoch goes on with the very next
    batch of the same permutation, as the uninterrupted run would.
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, batch_size: int,
                 shuffle: bool, drop_last: bool, seed: int = 0,
                 epoch_fn: Callable[[], int] | None = None, fused: int = 1):
        self.images, self.labels = images, labels
        self.batch_size, self.shuffle, self.drop_last = batch_size, shuffle, drop_last
        self.fused = fused
        self.seed, self.epoch_fn = seed, epoch_fn
        self._iterations = 0
        # The pass in progress: its epoch and the examples (per rank) handed out so far.
        self._epoch, self._examples_done = 0, 0
        self._resume_at: dict | None = None  # a state to continue from on the next pass

    def state_dict(self) -> dict:
        # The epoch with the seed defines the permutation: no need to store its indices.
        # (`ckpt_path=... seed=N` with another seed continues at the same position in the
        # order of the new seed, as asked.)
        return {"epoch": self._epoch, "examples": self._examples_done}

    def load_state_dict(self, state: dict) -> None:
        self._resume_at = state  # applies if the next pass is for the same epoch

    @staticmethod
    def _rank_and_world() -> tuple[int, int]:
        if dist.is_available() and dist.is_initialized():
            return dist.get_rank(), dist.get_world_size()
        return 0, 1

    def _indices(self, epoch: int) -> torch.Tensor:
        """This rank's example indices for the pass over the data in `epoch`."""
        n = len(self.images)
        if self.shuffle:
            seed = self.seed + epoch  # the same on every rank
            order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
        else:
            order = torch.arange(n)
        rank, world = self._rank_and_world()
        if self.drop_last:
            order = order[: n - n % world]  # equal shares keep the ranks in step
        return order[rank::world]

    def _num_examples(self) -> int:
        n, (rank, world) = len(self.images), self._rank_and_world()
        if self.drop_last:
            return n // world
        return len(range(rank, n, world))

    def num_batches(self) -> int:
        n = self._num_examples()
        if self.drop_last and n >= self.batch_size:
            return n // self.batch_size
        return math.ceil(n / self.batch_size)

    def __len__(self) -> int:
        return math.ceil(self.num_batches() / self.fused)

    def __iter__(self):
        # Runs at the first batch, when the trainer's epoch is the one this pass is for.
        epoch = self.epoch_fn() if self.epoch_fn else self._iterations
        self._iterations = epoch + 1
        resume, self._resume_at = self._resume_at, None
        start = resume["examples"] if resume and resume["epoch"] == epoch else 0
        order = self._indices(epoch).to(self.images.device)
        stop = min(self.num_batches() * self.batch_size, len(order))
        self._epoch, self._examples_done = epoch, start
        size = self.batch_size * self.fused
        for first in range(start, stop, size):
            index = order[first : min(first + size, stop)]
            self._examples_done = min(first + size, stop)
            yield self.images[index], self.labels[index]


class InMemoryImageDataModule(L.LightningDataModule):
    """Base of every dataset: subclasses only say how to read their images (`load`).

    Images are kept as uint8 (N, C, H, W) tensors at the configured size and channels,
    on the GPU when training runs on one; each batch is scaled to `value_range` there.
    Labels are int64 class indices, -1 where a dataset has none.

    binarize (Bernoulli-likelihood models on grey images, e.g. MNIST): "dynamic" draws a
    fresh binarization of every training batch (each pixel on with probability equal to its
    grey level; Burda et al., 2016); "static" binarizes the training images once. Either way
    validation and test use one fixed seeded binarization, the evaluation papers report.
    """

    name = "images"
    num_classes = 0

    def __init__(self, data_dir: str = "data", image_size: int = 28, channels: int = 1,
                 batch_size: int = 128, value_range: list[float] = (0.0, 1.0),
                 val_fraction: float = 0.1, test_fraction: float = 0.1, seed: int = 0,
                 download: bool = True, keep_on_gpu: bool = True, ordered_split: bool = False,
                 binarize: str | None = None):
        super().__init__()
        if channels not in (1, 3):
            raise GenmodelsError(f"dataset.channels must be 1 or 3, got {channels!r}.")
        if image_size < 4:
            raise GenmodelsError(f"dataset.image_size must be at least 4, got {image_size!r}.")
        if list(value_range) not in ([0.0, 1.0], [-1.0, 1.0]):
            raise GenmodelsError(
                f"dataset.value_range must be [0, 1] or [-1, 1], got {list(value_range)}."
            )
        if batch_size < 1:
            raise GenmodelsError(f"dataset.batch_size must be positive, got {batch_size!r}.")
        for key, fraction in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
            if not 0.0 <= fraction < 1.0:
                raise GenmodelsError(f"dataset.{key} must be in [0, 1), got {fraction!r}.")
        self.data_dir, self.image_size, self.channels = user_path(data_dir), image_size, channels
        self.batch_size, self.value_range = batch_size, tuple(value_range)
        self.val_fraction, self.test_fraction, self.seed = val_fraction, test_fraction, seed
        self.download, self.keep_on_gpu = download, keep_on_gpu
        # Hold out the last examples instead of a random sample (fixed, published splits).
        self.ordered_split = ordered_split
        if binarize not in BINARIZE:
            raise GenmodelsError(f"Unknown dataset.binarize {binarize!r}; valid choices: "
                                 f"{BINARIZE} (null: keep grey levels).")
        self.binarize = binarize
        self.splits: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        # Training batches per Lightning step (speed.fused_batches, set by train()).
        self.fused_batches = 1

    def load(self) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """Read the dataset: {"train": (images, labels)}, plus "val"/"test" if it has them.

        Images must already be prepared (`prepare_images`) to the configured size/channels.
        """
        raise NotImplementedError

    def setup(self, stage: str | None = None) -> None:
        if self.splits:
            return
        splits = self.load()
        train = splits["train"]
        if "test" in splits:
            test = splits["test"]
        else:
            train, test = split_off(*train, self.test_fraction, self.seed, self.ordered_split)
        if "val" in splits:
            val = splits["val"]
        else:
            train, val = split_off(*train, self.val_fraction, self.seed + 1, self.ordered_split)
        if len(train[0]) == 0:
            raise GenmodelsError(f"The {self.name} dataset has no training images left.")
        for split, fraction, stand_in in (("val", self.val_fraction, "training"),
                                          ("test", self.test_fraction, "validation")):
            if fraction > 0 and len((val if split == "val" else test)[0]) == 0:
                log.warning("dataset.%s_fraction=%s of the %s dataset's %d images is not one "
                            "image: the %s split uses the %s images instead.", split, fraction,
                            self.name, len(splits["train"][0]), split, stand_in)
        if len(val[0]) == 0:
            val = train  # val_fraction=0: validate on the training images
        if len(test[0]) == 0:
            test = val  # test_fraction=0: test on the validation images
        device = self.trainer.strategy.root_device if self.trainer else torch.device("cpu")
        if device.type != "cuda" or not self.keep_on_gpu:
            device = torch.device("cpu")
        if self.binarize:
            # Evaluation always sees one fixed stochastic binarization (a seeded draw), as
            # papers do, so that every epoch and every model scores the same images.
            test_is_val = test is val  # test_fraction=0: score the very same images
            val = stochastic_binarization(val[0], self.seed + 2), val[1]
            test = val if test_is_val else (stochastic_binarization(test[0], self.seed + 3),
                                            test[1])
            if self.binarize == "static":
                train = stochastic_binarization(train[0], self.seed + 4), train[1]
        self.splits = {name: (images.to(device), labels.to(device))
                       for name, (images, labels) in (("train", train), ("val", val),
                                                      ("test", test))}

    def _loader(self, split: str, shuffle: bool, fused: int = 1) -> TensorBatchLoader:
        images, labels = self.splits[split]
        epoch_fn = (lambda: self.trainer.current_epoch) if self.trainer else None
        return TensorBatchLoader(images, labels, self.batch_size, shuffle=shuffle,
                                 drop_last=shuffle, seed=self.seed, epoch_fn=epoch_fn,
                                 fused=fused)

    def train_dataloader(self) -> TensorBatchLoader:
        return self._loader("train", shuffle=True, fused=self.fused_batches)

    def val_dataloader(self) -> TensorBatchLoader:
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> TensorBatchLoader:
        return self._loader("test", shuffle=False)

    def scale(self, images: torch.Tensor, dynamic_binarization: bool = False) -> torch.Tensor:
        """uint8 images -> floats in `value_range` (optionally a fresh binarization)."""
        x = images.float().div_(255)
        if dynamic_binarization:
            x = torch.bernoulli(x)
        if self.value_range == (-1.0, 1.0):
            x = x.mul_(2).sub_(1)
        return x

    def on_after_batch_transfer(self, batch, dataloader_idx: int):
        images, labels = batch
        # Dynamic binarization: a new Bernoulli draw of each training image at every visit.
        dynamic = self.binarize == "dynamic" and self.trainer is not None and self.trainer.training
        return self.scale(images, dynamic_binarization=dynamic), labels
