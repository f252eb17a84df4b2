"""Nothing a run made is lost or mixed up: a full disk or a write cut short leaves the old
file whole, damaged checkpoints are refused by name, Ctrl-C stops between steps, and two
processes never write one run or one sweep."""

import errno
import hashlib
import os
import signal
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
import torch
from omegaconf import open_dict

from genmodels.engine import checkpoint_io
from genmodels.engine.runs import latest_checkpoint
from genmodels.errors import GenmodelsError
from genmodels.files import check_intact, checksum_path, write_with_checksum
from genmodels.jobs.train import train

from .conftest import FAST, ROOT, SMALL_DCGAN, TINY, compose_config, run_main


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def fails_partway(obj, file):
    """torch.save on a disk that fills after 1,000 bytes."""
    file.write(b"x" * 1000)
    raise OSError(errno.ENOSPC, "No space left on device")


def test_a_write_cut_short_leaves_the_old_file_and_its_checksum(tmp_path):
    path = tmp_path / "last.ckpt"
    write_with_checksum(path, lambda file: torch.save({"w": torch.ones(3)}, file))
    before, recorded = path.read_bytes(), checksum_path(path).read_text()
    with pytest.raises(OSError):
        write_with_checksum(path, lambda file: fails_partway(None, file))
    assert path.read_bytes() == before and checksum_path(path).read_text() == recorded
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt", "last.ckpt.sha256"]
    # The record is sha256sum's format: `sha256sum -c last.ckpt.sha256` checks it too.
    assert recorded == f"{digest(path)}  last.ckpt\n"


def test_a_full_disk_keeps_the_good_checkpoint_and_reports_itself(tmp_path, monkeypatch):
    run_dir = tmp_path / "run"
    args = ["model=ae", *TINY, "logger=csv", "trainer.limit_train_batches=3"]
    train(compose_config([*args, "trainer.max_epochs=1"], run_dir))
    last = run_dir / "checkpoints" / "last.ckpt"
    good = digest(last)
    monkeypatch.setattr(checkpoint_io.torch, "save", fails_partway)
    # The epoch's checkpoint fails, then the interrupted one: the first error is the one
    # reported, and no partial or empty file is left.
    with pytest.raises(GenmodelsError, match=r"The disk is full: could not write .*last.ckpt"):
        train(compose_config([f"resume={run_dir}", "trainer.max_epochs=2"], run_dir))
    assert digest(last) == good
    assert sorted(p.name for p in last.parent.iterdir()) == ["last.ckpt", "last.ckpt.sha256"]
    monkeypatch.undo()
    train(compose_config([f"resume={run_dir}", "trainer.max_epochs=2"], run_dir))
    assert torch.load(last, weights_only=False)["epoch"] == 1


def test_checkpoints_are_chosen_by_being_whole_not_by_time(tmp_path, caplog):
    run_dir = tmp_path / "run"
    train(compose_config(["model=ae", *TINY, "trainer.max_epochs=1"], run_dir))
    empty = run_dir / "checkpoints" / "interrupted.ckpt"
    empty.write_bytes(b"")  # the newest, as a crash on a full disk used to leave it
    assert latest_checkpoint(run_dir).name == "last.ckpt"
    assert f"Checkpoint {empty} is damaged: it is empty" in caplog.text
    (run_dir / "checkpoints" / "last.ckpt").write_bytes(b"PK\x03\x04 cut short")
    with pytest.raises(GenmodelsError, match="No whole checkpoint in .*: Checkpoint .* is damaged"):
        latest_checkpoint(run_dir)


def test_damaged_checkpoints_are_refused_by_name_and_the_run_is_untouched(tmp_path):
    run_dir = tmp_path / "run"
    train(compose_config(["model=vae", *TINY, "trainer.max_epochs=1"], run_dir))
    last = run_dir / "checkpoints" / "last.ckpt"
    records = {name: (run_dir / name).read_bytes() for name in ("config.yaml", "summary.json")}
    whole = last.read_bytes()

    # 4 KB overwritten inside the file: its recorded checksum differs; without one (a
    # checkpoint of an older genmodels), the archive's CRC of that part fails.
    middle = len(whole) // 2
    last.write_bytes(whole[:middle] + os.urandom(4096) + whole[middle + 4096:])
    with pytest.raises(GenmodelsError, match=f"Checkpoint {last} is damaged: its SHA-256"):
        train(compose_config([f"resume={run_dir}", "trainer.max_epochs=2"], run_dir))
    recorded = checksum_path(last).read_bytes()
    checksum_path(last).unlink()
    with pytest.raises(GenmodelsError, match=f"Checkpoint {last} is damaged: its part .* fails"):
        train(compose_config([f"resume={run_dir}", "trainer.max_epochs=2"], run_dir))
    checksum_path(last).write_bytes(recorded)

    # A weight replaced by finite random values, saved as a valid archive: only the
    # checksum recorded at writing knows.
    last.write_bytes(whole)
    checkpoint = torch.load(last, weights_only=False)
    name = next(iter(checkpoint["state_dict"]))
    checkpoint["state_dict"][name] = torch.randn_like(checkpoint["state_dict"][name])
    torch.save(checkpoint, last)
    with pytest.raises(GenmodelsError, match="its SHA-256 differs from the one recorded"):
        train(compose_config([f"resume={run_dir}", "trainer.max_epochs=2"], run_dir))
    with pytest.raises(GenmodelsError, match="is damaged"):
        check_intact(last)
    assert {name: (run_dir / name).read_bytes() for name in records} == records


class CtrlCMidStep(L.Callback):
    """Ctrl-C arrives in the middle of the `at_batch`-th training batch: after its first
    backward pass (a GAN: after D's, before D's update and G's step)."""

    def __init__(self, at_batch: int):
        self.at_batch = at_batch

    def on_after_backward(self, trainer, pl_module):
        if trainer.fit_loop.epoch_loop.batch_progress.total.ready == self.at_batch:
            self.at_batch = -1  # once
            os.kill(os.getpid(), signal.SIGINT)


@pytest.mark.parametrize("model, extra", [("dcgan", SMALL_DCGAN), ("vae", [])])
def test_ctrl_c_mid_step_then_resume_ends_with_the_uninterrupted_weights(model, extra,
                                                                         tmp_path):
    args = [f"model={model}", *extra, *TINY, "logger=csv", "trainer.limit_train_batches=3",
            "trainer.limit_val_batches=1", "dataset.batch_size=16", "trainer.max_epochs=2"]
    train(compose_config(args, tmp_path / "straight"))
    straight = torch.load(tmp_path / "straight/checkpoints/last.ckpt", weights_only=False)
    run_dir = tmp_path / "interrupted"
    cfg = compose_config(args, run_dir)
    with open_dict(cfg):
        cfg.callbacks.ctrl_c = {"_target_": f"{__name__}.CtrlCMidStep", "at_batch": 2}
    try:
        with pytest.raises(SystemExit) as stop:
            train(cfg)
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    assert stop.value.code == 130
    interrupted = torch.load(run_dir / "checkpoints/interrupted.ckpt", weights_only=False)
    assert interrupted["loops"]["fit_loop"]["epoch_loop.batch_progress"]["total"]["completed"] == 2
    train(compose_config([f"resume={run_dir}"], run_dir))
    resumed = torch.load(run_dir / "checkpoints/last.ckpt", weights_only=False)
    assert resumed["global_step"] == straight["global_step"]
    differing = [k for k, v in straight["state_dict"].items()
                 if not torch.equal(v, resumed["state_dict"][k])]
    assert not differing, differing[:3]


HOLD_LOCK = """
import sys, time
from pathlib import Path
from genmodels.engine.rundirs import lock_directory
lock_directory(Path(sys.argv[1]), "run")
print("locked", flush=True)
time.sleep(120)
"""


def test_a_second_process_is_refused_a_run_directory_in_use(tmp_path, capsys):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(run_dir)],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        for args in ([f"hydra.run.dir={run_dir}"], [f"resume={run_dir}"]):
            with pytest.raises(SystemExit, match=rf"is in use by process {holder.pid} \("):
                run_main("model=ae", *FAST, *args)
            assert list(run_dir.iterdir()) == []  # no log, no lock file
        assert "Traceback" not in capsys.readouterr().err
    finally:
        holder.kill()
        holder.wait()
    # The OS let go of the lock with the killed process: the directory can be used.
    run_main("model=ae", *TINY, "trainer.max_epochs=1", f"hydra.run.dir={run_dir}")
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()



def test_a_run_directory_with_another_runs_records_and_no_checkpoint_is_not_rewritten(
        tmp_path, capsys):
    # e.g. a run that failed before its first checkpoint: its record tells what it was.
    run_dir = tmp_path / "run"
    (run_dir / ".hydra").mkdir(parents=True)
    (run_dir / ".hydra" / "config.yaml").write_text("the earlier run's record\n")
    (run_dir / "summary.json").write_text("{}\n")
    with pytest.raises(SystemExit, match=r"holds another run's records \(summary.json, "
                                         r"\.hydra/config.yaml\) and no checkpoint"):
        run_main("model=ae", *FAST, f"hydra.run.dir={run_dir}")
    assert "Traceback" not in capsys.readouterr().err
    assert (run_dir / ".hydra" / "config.yaml").read_text() == "the earlier run's record\n"
    assert sorted(p.name for p in run_dir.iterdir()) == [".hydra", "summary.json"]


SIGTERM_AT_START = """
import os, runpy, signal, sys
import genmodels.jobs.train as job
checked, starts = job.check_run_options, []
def check_then_get_sigterm(cfg):  # SIGTERM while a run starts (the datamodule loads...)
    checked(cfg)
    starts.append(cfg)
    if len(starts) == int(os.environ["SIGTERM_AT_START"]):
        os.kill(os.getpid(), signal.SIGTERM)
job.check_run_options = check_then_get_sigterm
sys.argv = [os.path.abspath("train.py"), *sys.argv[1:]]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def test_sigterm_during_start_up_leaves_no_run_directory(tmp_path):
    run_dir = tmp_path / "run"
    done = subprocess.run([sys.executable, "-c", SIGTERM_AT_START, "model=ae", *FAST,
                           f"hydra.run.dir={run_dir}"], cwd=ROOT, capture_output=True,
                          text=True, timeout=120, env=os.environ | {"SIGTERM_AT_START": "1"})
    assert done.returncode == 1, (done.returncode, done.stderr[-2000:])
    assert done.stderr.strip().endswith("Error: Stopped by SIGTERM before the first training "
                                        "step: nothing of this start is kept.")
    assert "Traceback" not in done.stderr and not run_dir.exists()


def test_a_sweep_stopped_by_sigterm_writes_its_tables(tmp_path):
    sweep = tmp_path / "sweep"
    done = subprocess.run([sys.executable, "-c", SIGTERM_AT_START, "-m", "model=ae", *TINY,
                           "trainer.max_epochs=1", "seed=1,2,3", f"hydra.sweep.dir={sweep}"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env=os.environ | {"SIGTERM_AT_START": "2"})  # as job 1 starts
    assert done.returncode == 1, (done.returncode, done.stderr[-2000:])
    assert done.stderr.strip().endswith("Error: Stopped by SIGTERM; the sweep's tables list "
                                        "the jobs that ran.")
    table = (sweep / "sweep_summary.csv").read_text().splitlines()
    assert len(table) == 2 and table[1].startswith("0_ae_digits,ok,"), table  # job 0 ran
    assert not (sweep / "2_ae_digits").exists()  # job 2 never started


def test_a_read_only_working_directory_is_one_sentence(tmp_path, monkeypatch, capsys):
    def read_only(self, *args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system", str(self))

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(Path, "mkdir", read_only)  # as a user without write access sees it
    with pytest.raises(SystemExit, match=r"Cannot create the directory logs/runs/\S+: "
                                         r"Read-only file system. Run from a folder you can "
                                         r"write to, or name one: hydra.run.dir=<folder>"):
        run_main("model=ae", *FAST)
    assert "Traceback" not in capsys.readouterr().err

def test_a_sweep_directory_in_use_is_not_rewritten(tmp_path, capsys):
    sweep_dir = tmp_path / "sweep"
    sweep_dir.mkdir()
    (sweep_dir / "multirun.yaml").write_text("old sweep\n")
    (sweep_dir / "0_ae_digits").mkdir()
    with pytest.raises(SystemExit, match=f"hydra.sweep.dir={sweep_dir} holds an earlier sweep"):
        run_main("-m", "model=ae", *TINY, f"hydra.sweep.dir={sweep_dir}")
    assert "Traceback" not in capsys.readouterr().err
    assert (sweep_dir / "multirun.yaml").read_text() == "old sweep\n"
    assert sorted(p.name for p in sweep_dir.iterdir()) == ["0_ae_digits", "multirun.yaml"]


RUN_IN_A_DELETED_FOLDER = """
import os, runpy, sys
os.makedirs(sys.argv[1])
os.chdir(sys.argv[1])
os.rmdir(sys.argv[1])  # as `rm -r` from another shell does
sys.argv = [sys.argv[2]]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


@pytest.mark.parametrize("script", ["train", "generate", "evaluate"])
def test_a_deleted_working_directory_is_one_sentence(script, tmp_path):
    done = subprocess.run([sys.executable, "-c", RUN_IN_A_DELETED_FOLDER, str(tmp_path / "gone"),
                           str(ROOT / f"{script}.py")], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 1 and done.stderr.strip() == (
        "Error: The working directory no longer exists (deleted or moved since the shell "
        "entered it): cd to an existing folder and run again."), done.stderr[-2000:]


def test_a_resumed_run_stopped_before_its_first_step_writes_no_interrupted_checkpoint(
        tmp_path, monkeypatch):
    # It would be a copy of the checkpoint it resumed from: clutter, and the newest file.
    run_dir = tmp_path / "run"
    train(compose_config(["model=vae", *TINY, "logger=csv", "trainer.max_epochs=1"], run_dir))

    def fail(self, trainer, pl_module):
        raise RuntimeError("stopped before the first step")

    from genmodels.engine.random_streams import RandomStreams

    monkeypatch.setattr(RandomStreams, "on_train_start", fail)
    with pytest.raises(RuntimeError, match="before the first step"):
        train(compose_config([f"resume={run_dir}", "trainer.max_epochs=2"], run_dir))
    assert sorted(p.name for p in (run_dir / "checkpoints").glob("*.ckpt")) == ["last.ckpt"]
