"""Data modules: in-memory uint8 tensors, scaled batches, splits, errors that help."""

import urllib.request
from pathlib import Path
from urllib.error import URLError

import numpy as np
import pytest
import torch
from PIL import Image

from genmodels.data import (
    CelebADataModule,
    CIFAR10DataModule,
    DigitsDataModule,
    FashionMNISTDataModule,
    IdxDataModule,
    ImageFolderDataModule,
    MNISTDataModule,
    TensorBatchLoader,
    prepare_images,
    write_idx,
)
from genmodels.data.datamodule import split_off
from genmodels.errors import GenmodelsError


def batches(datamodule, split="train"):
    loader = getattr(datamodule, f"{split}_dataloader")()
    return [datamodule.on_after_batch_transfer(batch, 0) for batch in loader]


@pytest.mark.parametrize("value_range", [[0.0, 1.0], [-1.0, 1.0]])
@pytest.mark.parametrize("size, channels", [(28, 1), (32, 3), (8, 1)])
def test_digits_batches_have_the_configured_shape_and_range(size, channels, value_range):
    dm = DigitsDataModule(image_size=size, channels=channels, batch_size=64,
                          value_range=value_range)
    dm.setup()
    x, y = batches(dm)[0]
    assert x.shape == (64, channels, size, size) and x.dtype == torch.float32
    assert x.min() >= value_range[0] and x.max() <= value_range[1]
    assert x.min() < value_range[0] + 0.05 and x.max() > value_range[1] - 0.05
    assert y.dtype == torch.int64 and set(y.tolist()) <= set(range(10))
    images, _ = dm.splits["train"]
    assert images.dtype == torch.uint8  # kept compact in memory, scaled per batch


def test_digits_splits_are_disjoint_and_complete():
    dm = DigitsDataModule(val_fraction=0.1, test_fraction=0.1)
    dm.setup()
    sizes = {name: len(images) for name, (images, _) in dm.splits.items()}
    assert sum(sizes.values()) == 1797
    assert sizes["test"] == 180 and sizes["val"] == round(1617 * 0.1)


def test_split_off_partitions_the_examples_reproducibly():
    images, labels = torch.arange(50).view(50, 1, 1, 1), torch.arange(50)
    (rest, rest_labels), (held, held_labels) = split_off(images, labels, 0.2, seed=1)
    assert len(held) == 10 and len(rest) == 40
    assert sorted(rest_labels.tolist() + held_labels.tolist()) == list(range(50))
    assert torch.equal(held_labels, split_off(images, labels, 0.2, seed=1)[1][1])


def test_loader_visits_every_example_once_and_reshuffles_each_epoch():
    images = torch.arange(100, dtype=torch.uint8).view(100, 1, 1, 1)
    labels = torch.arange(100)
    loader = TensorBatchLoader(images, labels, batch_size=16, shuffle=True, drop_last=False)
    first = torch.cat([y for _, y in loader])
    second = torch.cat([y for _, y in loader])
    assert sorted(first.tolist()) == list(range(100)) == sorted(second.tolist())
    assert not torch.equal(first, second)
    assert len(loader) == 7
    dropping = TensorBatchLoader(images, labels, batch_size=16, shuffle=True, drop_last=True)
    assert len(dropping) == 6 and all(len(y) == 16 for _, y in dropping)


def test_loader_resumes_mid_epoch_from_any_batch_with_the_same_permutation():
    images = torch.zeros(50, 1, 1, 1, dtype=torch.uint8)
    labels = torch.arange(50)
    trainer = {"epoch": 0}  # the epoch as the trainer counts it

    def loader():
        return TensorBatchLoader(images, labels, batch_size=8, shuffle=True, drop_last=True,
                                 seed=5, epoch_fn=lambda: trainer["epoch"])

    straight = loader()
    epochs = []
    for trainer["epoch"] in (0, 1, 2):
        epochs.append([y for _, y in straight])
    for stopped_after in range(1, len(straight) + 1):
        trainer["epoch"] = 1
        interrupted = loader()
        passes = iter(interrupted)
        for _ in range(stopped_after):
            next(passes)
        resumed = loader()  # a new process, fed the checkpointed state
        resumed.load_state_dict(interrupted.state_dict())
        rest = [y for _, y in resumed]
        assert len(rest) == len(straight) - stopped_after
        assert all(torch.equal(a, b) for a, b in zip(rest, epochs[1][stopped_after:],
                                                         strict=True))
        trainer["epoch"] = 2  # the next epoch is whole again
        assert all(torch.equal(a, b) for (_, a), b in zip(resumed, epochs[2], strict=True))
    # A checkpoint at the end of epoch 1 resumes at epoch 2: from its first batch.
    resumed = loader()
    resumed.load_state_dict(straight.state_dict() | {"epoch": 1})
    assert all(torch.equal(a, b) for (_, a), b in zip(resumed, epochs[2], strict=True))


def test_loader_gives_each_ddp_rank_its_own_equal_share(monkeypatch):
    import torch.distributed as dist

    images = torch.zeros(101, 1, 1, 1, dtype=torch.uint8)
    labels = torch.arange(101)
    seen = []
    for rank in (0, 1):
        monkeypatch.setattr(dist, "is_initialized", lambda: True)
        monkeypatch.setattr(dist, "get_world_size", lambda: 2)
        monkeypatch.setattr(dist, "get_rank", lambda r=rank: r)
        loader = TensorBatchLoader(images, labels, 10, shuffle=True, drop_last=True,
                                   epoch_fn=lambda: 3)
        seen.append(torch.cat([y for _, y in loader]))
    assert len(seen[0]) == len(seen[1]) == 50
    assert not set(seen[0].tolist()) & set(seen[1].tolist())


def test_prepare_images_converts_channels_and_crops_to_square():
    rgb = torch.randint(0, 256, (2, 3, 40, 60), dtype=torch.uint8)
    grey = prepare_images(rgb, 16, 1)
    assert grey.shape == (2, 1, 16, 16) and grey.dtype == torch.uint8
    assert prepare_images(grey, 16, 3).shape == (2, 3, 16, 16)


def write_image(path: Path, size: tuple[int, int], colour: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((size[1], size[0], 3), colour, dtype=np.uint8)).save(path)


def test_folder_with_class_subfolders_has_labels(tmp_path):
    for i in range(6):
        write_image(tmp_path / "cats" / f"{i}.png", (40, 30), 30)
        write_image(tmp_path / "dogs" / "nested" / f"{i}.jpg", (20, 50), 220)
    dm = ImageFolderDataModule(data_dir=tmp_path, image_size=16, channels=3,
                               val_fraction=0.25, test_fraction=0.25)
    dm.setup()
    assert dm.class_names == ["cats", "dogs"] and dm.num_classes == 2
    images, labels = (torch.cat(t) for t in zip(*dm.splits.values(), strict=True))
    assert images.shape == (12, 3, 16, 16)
    assert sorted(labels.tolist()) == [0] * 6 + [1] * 6
    cats = images[labels == 0].float().mean()
    assert abs(cats - 30) < 2  # pixels survive decoding and resizing


def test_folder_without_subfolders_is_unlabelled_and_greyscale_works(tmp_path):
    for i in range(5):
        write_image(tmp_path / f"{i}.png", (10, 10), 100)
    dm = ImageFolderDataModule(data_dir=tmp_path, image_size=8, channels=1, val_fraction=0.2,
                               test_fraction=0.2)
    dm.setup()
    images, labels = dm.splits["train"]
    assert images.shape[1:] == (1, 8, 8) and set(labels.tolist()) == {-1}


def test_folder_reads_16_bit_pngs_at_their_depth(tmp_path):
    # A grey ramp over the whole 16-bit range; Pillow alone would clip it to white.
    ramp = np.linspace(0, 65535, 16 * 16).round().astype(np.uint16).reshape(16, 16)
    Image.fromarray(ramp).save(tmp_path / "ramp.png")
    with Image.open(tmp_path / "ramp.png") as image:
        assert image.mode == "I;16"  # really a 16-bit file
    expected = torch.from_numpy((ramp / 257).round().astype(np.uint8))
    for channels in (1, 3):
        dm = ImageFolderDataModule(data_dir=tmp_path, image_size=16, channels=channels,
                                   val_fraction=0, test_fraction=0)
        dm.setup()
        images = dm.splits["train"][0]
        assert images.shape == (1, channels, 16, 16)
        assert all(torch.equal(c, expected) for c in images[0])
    Image.fromarray(np.full((4, 4), -5, dtype=np.int32), mode="I").save(tmp_path / "neg.tif")
    with pytest.raises(GenmodelsError, match="neg.tif: its grey levels .* 8 or 16 bits"):
        ImageFolderDataModule(data_dir=tmp_path, image_size=16).setup()


def test_folder_errors_name_the_problem(tmp_path):
    with pytest.raises(GenmodelsError, match="needs dataset.data_dir"):
        ImageFolderDataModule(data_dir=None).setup()
    with pytest.raises(GenmodelsError, match="No images in"):
        ImageFolderDataModule(data_dir=tmp_path).setup()
    (tmp_path / "broken.png").write_bytes(b"not an image")
    with pytest.raises(GenmodelsError, match="Cannot read image .*broken.png"):
        ImageFolderDataModule(data_dir=tmp_path).setup()


@pytest.mark.parametrize("module, folder", [(MNISTDataModule, "MNIST"),
                                            (FashionMNISTDataModule, "FashionMNIST")])
def test_mnist_style_datasets_read_the_official_files(tmp_path, module, folder):
    raw = tmp_path / folder / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for prefix, n in (("train", 50), ("t10k", 20)):
        write_idx(raw / f"{prefix}-images-idx3-ubyte", rng.integers(0, 256, (n, 28, 28)))
        write_idx(raw / f"{prefix}-labels-idx1-ubyte", rng.integers(0, 10, n))
    dm = module(data_dir=tmp_path, download=False, val_fraction=0.2)
    dm.prepare_data()
    dm.setup()
    assert len(dm.splits["test"][0]) == 20 and len(dm.splits["train"][0]) == 40
    assert dm.splits["train"][0].shape[1:] == (1, 28, 28)


@pytest.fixture
def no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise URLError("no network in this test")

    monkeypatch.setattr(urllib.request, "urlopen", refuse)


@pytest.mark.parametrize("module, expected", [
    (MNISTDataModule, "MNIST/raw/"),
    (FashionMNISTDataModule, "FashionMNIST/raw/"),
    (CIFAR10DataModule, "cifar-10-batches-py/"),
    (CelebADataModule, "img_align_celeba/"),
])
def test_missing_dataset_says_where_and_what(tmp_path, no_network, module, expected):
    dm = module(data_dir=tmp_path / "nowhere")
    with pytest.raises(GenmodelsError) as error:
        dm.prepare_data()
    message = str(error.value)
    assert f"The {module.name} dataset is not in {tmp_path / 'nowhere'}" in message
    assert expected in message and "dataset.data_dir" in message
    assert "\n" not in message
    # The reason, not only torchvision's "Error downloading <file>:" (CelebA's Google
    # Drive download needs gdown first)
    assert "no network in this test" in message or "'gdown' is required" in message
    # Where the files of an IDX dataset may be kept under other names
    assert ("load with dataset=idx" in message) == (module.name in ("mnist", "fashion"))


def test_missing_dataset_with_download_off(tmp_path):
    dm = MNISTDataModule(data_dir=tmp_path, download=False)
    with pytest.raises(GenmodelsError, match="dataset.download=false"):
        dm.prepare_data()


@pytest.mark.parametrize("kwargs, message", [
    ({"channels": 2}, "channels must be 1 or 3, got 2"),
    ({"value_range": [0, 255]}, "value_range must be"),
    ({"val_fraction": 1.5}, "val_fraction must be in"),
])
def test_bad_dataset_settings_are_refused(kwargs, message):
    with pytest.raises(GenmodelsError, match=message):
        DigitsDataModule(**kwargs)


def test_idx_files_load_with_an_ordered_split(tmp_path):
    images = np.arange(50 * 28 * 28).reshape(50, 28, 28) % 256
    write_idx(tmp_path / "images-idx3-ubyte", images)
    write_idx(tmp_path / "labels-idx1-ubyte.gz", np.arange(50) % 10)
    dm = IdxDataModule(images=tmp_path / "images-idx3-ubyte",
                       labels=tmp_path / "labels-idx1-ubyte.gz", val_fraction=0.2,
                       test_fraction=0.0, ordered_split=True)
    dm.setup()
    train_labels, val_labels = dm.splits["train"][1], dm.splits["val"][1]
    assert len(train_labels) == 40 and len(val_labels) == 10 and dm.num_classes == 10
    assert torch.equal(dm.splits["val"][0][:, 0], torch.from_numpy(images[40:]).to(torch.uint8))
    assert torch.equal(dm.splits["test"][1], val_labels)


def test_idx_errors_name_the_file(tmp_path):
    with pytest.raises(GenmodelsError, match="needs dataset.images"):
        IdxDataModule().setup()
    with pytest.raises(GenmodelsError, match="Cannot read IDX file .*missing"):
        IdxDataModule(images=tmp_path / "missing").setup()
    (tmp_path / "bad").write_bytes(b"\x01\x02\x03\x04")
    with pytest.raises(GenmodelsError, match="not an IDX file"):
        IdxDataModule(images=tmp_path / "bad").setup()
