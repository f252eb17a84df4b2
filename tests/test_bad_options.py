"""Options that crashed, hung, segfaulted or were silently taken (issue 26): each now stops
with one sentence naming the bad value, before anything runs."""

import json
import os
import stat
from pathlib import Path

import numpy as np
import pytest
import torch

from genmodels.config import check_overrides_compose, is_sweep
from genmodels.errors import GenmodelsError
from genmodels.jobs.evaluate import evaluate
from genmodels.jobs.generate import check_options
from genmodels.jobs.train import train
from genmodels.sampling import chosen_device

from .conftest import CONF, TINY, compose_config, run_main
from .test_generate_evaluate import tool_config


@pytest.mark.parametrize("override, message", [
    ("seed=-1", "seed must be a whole number from 0 to 4294967295, got -1"),
    ("trainer.precision=64", "trainer.precision=64 is not one genmodels trains in; valid "
                             "choices: 32-true, 16-mixed, bf16-mixed"),
    ("trainer.check_val_every_n_epoch=0", "trainer.check_val_every_n_epoch must be a whole "
                                          "number of at least 1"),
    ("speed.compile_mode=bogus", "speed.compile_mode='bogus'; valid choices: default"),
    ("speed.cpu_threads=100000", "speed.cpu_threads must be a whole number from 1 to"),
    ("model.latent_dim=0", "model.latent_dim must be a whole number of at least 1, got 0"),
    ("resume=", "resume= is empty: give the run directory"),
    # Lightning's own checks of the trainer's settings, as one sentence of ours
    ("trainer.strategy=bogus", "Lightning's Trainer refused the trainer settings: You selected "
                               "an invalid strategy name: `strategy='bogus'`"),
    ("trainer.limit_train_batches=-1", "Lightning's Trainer refused the trainer settings: You "
                                       "have passed invalid value -1 for limit_train_batches"),
])
def test_train_options_are_refused_in_one_sentence(override, message, tmp_path):
    with pytest.raises(GenmodelsError, match=message.replace("(", r"\(").replace(")", r"\)")):
        train(compose_config(["model=vae", *TINY, override], tmp_path / "run"))


@pytest.mark.parametrize("config, args, message", [
    ("config", ["model=vea"], r"Unknown model=vea \(did you mean vae\?\); valid choices: ae,"),
    ("config", ["trainer.max_epoch=3"], r"Unknown key trainer.max_epoch \(did you mean "
                                        r"trainer.max_epochs\?\); valid keys under trainer: "),
    ("generate", ["nrwo=3"], r"Unknown key nrwo \(did you mean nrow\?\)"),
    ("evaluate", ["run=x", "splt=test"], r"Unknown key splt \(did you mean split\?\)"),
    # A list value is one value, not a sweep (its commas sit inside brackets).
    ("config", ["model=cgan", "model.generator.widths=[16,8]"],
     r"Unknown key model.generator.widths; valid keys under model.generator: .*network"),
])
def test_unknown_options_and_keys_name_the_closest_match(config, args, message):
    with pytest.raises(GenmodelsError, match=message):
        check_overrides_compose(str(CONF), config, args)
    check_overrides_compose(str(CONF), config, ["-m", *args])  # sweeps and flags: Hydra's


@pytest.mark.parametrize("arg, sweeps", [
    ("model=ae,vae", True), ("model.optimizer.lr=choice(1e-3,1e-4)", True),
    ("seed=range(1,4)", True), ("model.generator.widths=[16,8]", False),
    ("tags=[a,b]", False), ('name="a,b"', False), ("x={a:1,b:2}", False),
])
def test_a_sweep_is_told_from_a_list_value(arg, sweeps):
    assert is_sweep(arg) is sweeps


@pytest.mark.parametrize("override, message", [
    ("num=100000000", "num must be a whole number from 1 to 100000, got 100000000"),
    ("nrow=0", "nrow must be a whole number from 1"),
    ("nrow=-2", "nrow must be a whole number from 1"),
    ("task=interpolate rows=0", "rows must be a whole number from 1"),
    ("task=semantic nrow=100000", "nrow must be a whole number from 1 to 316"),
    ("labels=[1.7]", r"labels must be whole numbers \(class labels\), got \[1.7\]"),
    ("labels=[cat]", r"labels must be whole numbers \(class labels\), got \['cat'\]"),
    ("multiples=[a,b]", r"multiples must be numbers, got \['a', 'b'\]"),
    ("truncation=abc", "truncation must be a number of at least 0"),
])
def test_generate_options_are_refused_before_anything_runs(override, message):
    with pytest.raises(GenmodelsError, match=message):
        check_options(tool_config("generate", "run=nowhere", *override.split()))


def test_devices_this_machine_lacks_are_named():
    assert chosen_device("cpu") == "cpu"
    with pytest.raises(GenmodelsError, match="device='bogus'; valid choices: auto, cpu, cuda"):
        chosen_device("bogus")
    if not torch.cuda.is_available():
        with pytest.raises(GenmodelsError, match="device='cuda' is not available on this "
                                                 "machine; it has: cpu"):
            chosen_device("cuda")


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes to read-only folders")
def test_a_read_only_output_folder_is_named(tmp_path):
    from genmodels.files import make_output_folder

    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(stat.S_IRUSR | stat.S_IXUSR)
    with pytest.raises(GenmodelsError, match=f"Cannot write to {folder}"):
        make_output_folder(folder / "out")


def test_outputs_under_proc_are_named(tmp_path):
    from genmodels.files import make_output_folder

    with pytest.raises(GenmodelsError, match="Cannot write to /proc/genmodels"):
        make_output_folder(Path("/proc/genmodels"))


@pytest.mark.parametrize("override, message", [
    ("classifier_epochs=0", "classifier_epochs must be a whole number of at least 1, got 0"),
    ("nll_samples=-3", "nll_samples must be a whole number of at least 0, got -3"),
])
def test_evaluate_options_are_refused(override, message):
    with pytest.raises(GenmodelsError, match=message):
        evaluate(tool_config("evaluate", "run=nowhere", override))


def test_keys_added_to_generate_and_evaluate_are_refused(capsys):
    for script in ("generate", "evaluate"):
        with pytest.raises(SystemExit, match=r"\+metrics=\[bogus\]: this command takes no "
                                             r"new keys"):
            run_main("run=nowhere", "+metrics=[bogus]", script_name=script)
    assert "Traceback" not in capsys.readouterr().err


def test_a_refused_resume_appends_nothing_to_the_runs_log(tmp_path, capsys):
    run_dir = tmp_path / "run"
    run_main("model=ae", *TINY, "trainer.max_epochs=1", f"hydra.run.dir={run_dir}")
    log = (run_dir / "train.log").read_bytes()
    # Refused after the start has logged its choices (threads, ...): by the checkpoint check.
    with pytest.raises(SystemExit, match="was trained with speed.fused_batches=1"):
        run_main(f"resume={run_dir}", "speed.fused_batches=4", "trainer.max_epochs=2")
    assert (run_dir / "train.log").read_bytes() == log
    assert "Traceback" not in capsys.readouterr().err


def test_a_conditional_gan_checks_every_label_before_training(tmp_path):
    from genmodels.data import write_idx

    labels = np.arange(200) % 10
    labels[150] = 200  # deep in the data: the first batches are fine
    write_idx(tmp_path / "images-idx3-ubyte", np.zeros((200, 28, 28)))
    write_idx(tmp_path / "labels-idx1-ubyte", labels)
    with pytest.raises(GenmodelsError, match="The dataset has labels up to 200, but "
                                             "model.num_classes is 10"):
        train(compose_config(["model=cgan", "dataset=idx", *TINY,
                              f"dataset.images={tmp_path / 'images-idx3-ubyte'}",
                              f"dataset.labels={tmp_path / 'labels-idx1-ubyte'}",
                              "dataset.ordered_split=true", "dataset.batch_size=8"],
                             tmp_path / "run"))


def test_too_few_images_for_a_validation_split_is_said(tmp_path, caplog):
    from PIL import Image

    folder = tmp_path / "two"
    folder.mkdir()
    for index in range(2):
        Image.new("RGB", (16, 16), (index * 200, 0, 0)).save(folder / f"{index}.png")
    train(compose_config(["model=ae", "dataset=folder", f"dataset.data_dir={folder}",
                          "dataset.image_size=16", "model.encoder.hidden_sizes=[8]",
                          "model.decoder.hidden_sizes=[8]", *TINY, "trainer.max_epochs=1"],
                         tmp_path / "run"))
    assert ("dataset.val_fraction=0.1 of the folder dataset's 2 images is not one image: "
            "the val split uses the training images instead") in caplog.text


def test_resume_given_a_checkpoint_file_names_its_run_directory(tmp_path, capsys):
    checkpoint = tmp_path / "run" / "checkpoints" / "last.ckpt"
    checkpoint.parent.mkdir(parents=True)
    checkpoint.write_bytes(b"")
    with pytest.raises(SystemExit, match=rf"resume={checkpoint} is a file; resume= takes the "
                                         rf"run's directory .*: resume={tmp_path / 'run'}\."):
        run_main(f"resume={checkpoint}")
    assert "Traceback" not in capsys.readouterr().err


def test_newcomer_walls_of_issue_27(tmp_path, caplog):
    # `~` in a path is expanded (quoted, since Hydra's grammar reserves a leading ~).
    from genmodels.data.datasets import ImageFolderDataModule

    assert ImageFolderDataModule(data_dir="~/photos").data_dir == str(Path.home() / "photos")
    # A smoothing set with the hinge loss (model=dcgan's since it ships hinge) is ignored
    # with a warning: hinge has no labels to smooth.
    gan = build_model("model=dcgan", "model.loss=hinge", "model.label_smoothing=0.1")
    assert gan.label_smoothing == 0.0
    assert "model.label_smoothing=0.1 is not used by the hinge loss" in caplog.text
    # The coding size's other name is named.
    with pytest.raises(GenmodelsError, match=r"Unknown key model.latent_dim \(this model "
                                             r"calls it model.codings_dim\)"):
        check_overrides_compose(str(CONF), "config", ["model=ae", "model.latent_dim=2"])
    with pytest.raises(GenmodelsError, match=r"quote a value that starts with ~, as in "
                                             r"'dataset.data_dir=\"~/photos\"'"):
        check_overrides_compose(str(CONF), "config", ["dataset.data_dir=~/photos"])
    # Samples are plain tensors: no gradient history.
    assert not build_model("model=vae").sample(2).requires_grad


def build_model(*overrides: str):
    from genmodels.config import build

    return build(compose_config(list(overrides)).model)


def test_resuming_a_finished_run_says_how_to_extend_it(tmp_path):
    run_dir = tmp_path / "run"
    train(compose_config(["model=ae", *TINY, "trainer.max_epochs=1"], run_dir))
    summary = (run_dir / "summary.json").read_bytes()
    with pytest.raises(GenmodelsError, match=r"has trained 1 epochs and trainer.max_epochs=1: "
                                             r"nothing is left to train. Continue for more "
                                             rf"epochs, e.g. resume={run_dir} extra_epochs=10 "
                                             r"\(or trainer.max_epochs=11\)"):
        train(compose_config([f"resume={run_dir}"], run_dir))
    assert (run_dir / "summary.json").read_bytes() == summary
    # extra_epochs: one more epoch than the checkpoint's, whatever max_epochs was
    train(compose_config([f"resume={run_dir}", "extra_epochs=1"], run_dir))
    assert json.loads((run_dir / "summary.json").read_text())["epochs"] == 2
    with pytest.raises(GenmodelsError, match="extra_epochs=2 counts from a checkpoint's epochs: "
                                             "use it with resume=<run dir>"):
        train(compose_config(["model=ae", *TINY, "extra_epochs=2"], tmp_path / "new"))
    with pytest.raises(GenmodelsError, match="extra_epochs must be"):
        train(compose_config([f"resume={run_dir}", "extra_epochs=0"], run_dir))
