"""Run directories: each new run or sweep claims its own, and nothing is written into one
until the run has passed its checks (conf/hydra/default.yaml)."""

import itertools
import logging
import os
import shutil
import signal
import sys
from datetime import datetime
from pathlib import Path

try:
    import fcntl
except ImportError:  # Windows: no run-directory locks
    fcntl = None

from hydra.core.hydra_config import HydraConfig
from hydra.core.utils import JobStatus
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf, open_dict, read_write

from genmodels.errors import GenmodelsError
from genmodels.files import write_text_atomically

log = logging.getLogger(__name__)


def claim_directory(path: str | Path) -> Path:
    """Create `path`, or `path_2`, `path_3`, ... when it is taken, and return the one
    created. `mkdir` fails when the directory exists, so two runs started in the same
    second (or two jobs on a shared disk) can never get the same one."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        for number in itertools.count(1):
            candidate = path if number == 1 else path.with_name(f"{path.name}_{number}")
            try:
                candidate.mkdir()
                return candidate
            except FileExistsError:
                continue
    except OSError as error:  # a read-only working directory, a full disk...
        raise GenmodelsError(
            f"Cannot create the directory {path}: {error.strerror}. Run from a folder you "
            "can write to, or name one: hydra.run.dir=<folder> (hydra.sweep.dir=<folder> "
            "for a sweep).") from None


def run_directory(checkpoint: Path) -> Path:
    """The run a checkpoint belongs to: `<run>/checkpoints/*.ckpt`, or Lightning's SLURM
    `<run>/hpc_ckpt_N.ckpt`."""
    in_folder = checkpoint.parent.name == "checkpoints"
    return checkpoint.parent.parent if in_folder else checkpoint.parent


def make_directory(path: Path, key: str) -> None:
    """Create `path` (and its parents) if needed, or say in one sentence why it cannot be."""
    if path.exists() and not path.is_dir():
        raise GenmodelsError(f"{key}={path} is a file, not a directory: give a directory.")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise GenmodelsError(f"Cannot create {key}={path}: {error.strerror}.") from None


def given_on_command_line(config: DictConfig, key: str) -> bool:
    return any(o.split("=", 1)[0].lstrip("+~") == key for o in config.hydra.overrides.hydra)


def quoted(path: Path) -> str:
    """A path as a quoted value of a Hydra override."""
    return "'" + str(path).replace("\\", "\\\\").replace("'", "\\'") + "'"


_held_locks: list[int] = []  # open directories: the OS lets go of their locks at exit


def is_first_process() -> bool:
    """Whether this is the process that owns the run's directory: not one of the other
    ranks that Lightning, torchrun or SLURM start for DDP (they run the same command)."""
    return all(os.environ.get(name, "0") == "0" for name in ("LOCAL_RANK", "RANK", "SLURM_PROCID"))


def lock_directory(path: Path, what: str) -> None:
    """Hold an exclusive OS lock on the directory `path` for the rest of this process's
    life, or refuse in one sentence, naming the process that holds it. The OS lets go of
    it when the process ends, however it ends; no lock file is left behind."""
    if fcntl is None or not is_first_process():
        return
    handle = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(handle)
        raise GenmodelsError(
            f"{path} is in use by {lock_holder(path)}: two processes writing one {what} "
            f"would mix or overwrite each other's checkpoints and logs. Wait for it to "
            f"end, or choose another directory.") from None
    _held_locks.append(handle)


def lock_holder(path: Path) -> str:
    """The process that holds the lock on `path`, from Linux's /proc/locks (a line such as
    `1: FLOCK  ADVISORY  WRITE 4992 00:2f:1234 0 EOF`) and its command line."""
    status = os.stat(path)
    key = f"{os.major(status.st_dev):02x}:{os.minor(status.st_dev):02x}:{status.st_ino}"
    try:
        lines = Path("/proc/locks").read_text().splitlines()
        for fields in (line.split() for line in lines):
            if "FLOCK" in fields and "->" not in fields and key in fields:
                pid = fields[fields.index(key) - 1]
                command = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
                return f"process {pid} ({command.decode(errors='replace').strip()[:200]})"
    except OSError:
        pass
    return "another process"


def release_directory_locks() -> None:
    """Let go of the run's (or sweep's) directory lock: at the end of the run, and for a
    run that ends early but whose process goes on (tests calling train.py's main)."""
    while _held_locks:
        os.close(_held_locks.pop())


def refuse(error: GenmodelsError):
    """Stop in one sentence from inside Hydra (which would print a traceback for an
    exception raised in its callbacks)."""
    sys.exit(f"Error: {error}")


class StoppedBySignal(BaseException):
    """SIGTERM outside Lightning's fit. Not an Exception: neither a job's error handling
    nor Hydra's takes it for one failed job of a sweep that then goes on; train.py's
    run() cleans up and says so."""


def stop_on_sigterm() -> None:
    """Until Lightning's fit takes SIGTERM over (it then stops at the end of a step and
    saves interrupted.ckpt), SIGTERM raises StoppedBySignal, so that a start stopped by it
    is cleaned up as a refused one (discard_if_unused), and a sweep writes its tables,
    instead of dying half-made."""
    def handler(signum, frame):
        if signal.getsignal(signal.SIGTERM) is handler:
            raise StoppedBySignal()
        # else Lightning's own handler is running, and calls the ones before it: its turn

    signal.signal(signal.SIGTERM, handler)


class RunDirectory(Callback):
    """Hydra callback: a new run (or a sweep) claims its directory exclusively before Hydra
    uses it, adding `_2`, `_3`, ... to the name when it is taken. A directory given on the
    command line (`hydra.run.dir=...`, or the run continued with `resume=`) is used as it
    is; `hydra.sweep.dir=...` must be new or empty (a sweep's records are not rewritten by
    another). A run or sweep holds an OS lock on its directory while it lives: a second
    process that would write into it is refused. A run refused or failed before its first
    training step takes away the directory it created (discard_if_unused), so no empty run
    is left behind."""

    # The directory this process's run created, if any (one run per process).
    created: Path | None = None
    # An existing run's job log and its size before this process: a refused resume= takes
    # back what it appended.
    job_log: tuple[Path, int] | None = None
    # Whether the run passed its checks and began to write its records, and whether it
    # took a training step (the job sets both).
    started = False
    trained = False

    def on_run_start(self, config: DictConfig, **kwargs) -> None:
        run_dir = Path(str(config.hydra.run.dir))
        try:
            resume = Path(str(config.get("resume") or ""))
            if config.get("resume") and resume.is_file():
                raise GenmodelsError(f"resume={resume} is a file; resume= takes the run's "
                                     f"directory (it picks the newest whole checkpoint): "
                                     f"resume={run_directory(resume)}.")
            if config.get("resume") or given_on_command_line(config, "hydra.run.dir"):
                created = not run_dir.exists()
                make_directory(run_dir, "hydra.run.dir")
            else:
                run_dir, created = claim_directory(run_dir), True
                with read_write(config.hydra), open_dict(config.hydra):
                    config.hydra.run.dir = str(run_dir)
            RunDirectory.created = run_dir.absolute() if created else None
            RunDirectory.started = RunDirectory.trained = False
            lock_directory(run_dir, "run")
            job_log = run_dir.absolute() / f"{config.hydra.job.name}.log"
            RunDirectory.job_log = (job_log, job_log.stat().st_size) if job_log.is_file() else None
        except GenmodelsError as error:
            refuse(error)

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        try:
            if given_on_command_line(config, "hydra.sweep.dir"):
                sweep_dir = Path(str(config.hydra.sweep.dir))
                if sweep_dir.is_dir() and any(sweep_dir.iterdir()):
                    raise GenmodelsError(
                        f"hydra.sweep.dir={sweep_dir} holds an earlier sweep (or other files); "
                        "a new sweep would rewrite its records. Give a new or empty directory.")
                make_directory(sweep_dir, "hydra.sweep.dir")
                lock_directory(sweep_dir, "sweep")
                return
            sweep_dir = claim_directory(str(config.hydra.sweep.dir))
            lock_directory(sweep_dir, "sweep")
        except GenmodelsError as error:
            refuse(error)
        with read_write(config.hydra), open_dict(config.hydra):
            config.hydra.sweep.dir = str(sweep_dir)
            # Each job's config is composed again from these overrides (by every launcher,
            # also in other processes or on other machines): they must name the directory.
            config.hydra.overrides.hydra.append(f"hydra.sweep.dir={quoted(sweep_dir)}")

    def on_run_end(self, config: DictConfig, **kwargs) -> None:
        release_directory_locks()

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        release_directory_locks()

    def on_job_start(self, config: DictConfig, **kwargs) -> None:
        RunDirectory.started = RunDirectory.trained = False  # each job of a sweep anew

    def on_job_end(self, config: DictConfig, job_return, **kwargs) -> None:
        if job_return.status == JobStatus.FAILED:
            self.discard_if_unused()

    @staticmethod
    def discard_if_unused() -> None:
        """After a start that was refused (or failed) before its first training step:
        remove the directory this run created, whatever it had begun to write there (its
        log, records, the sanity check's logger folders); in a directory it did not
        create, take back the lines it appended to the job log, unless it had begun to
        write its records."""
        if RunDirectory.created is None and RunDirectory.job_log is not None \
                and not RunDirectory.started:
            path, size = RunDirectory.job_log
            if path.is_file() and path.stat().st_size > size:
                with open(path, "r+b") as file:
                    file.truncate(size)
        run_dir = RunDirectory.created
        if RunDirectory.trained or run_dir is None or not run_dir.is_dir():
            return
        root = logging.getLogger()
        for handler in list(root.handlers):  # Hydra's handler of the job log
            if Path(getattr(handler, "baseFilename", "/")).parent == run_dir:
                root.removeHandler(handler)
                handler.close()
        shutil.rmtree(run_dir, ignore_errors=True)
        RunDirectory.created = None


def save_hydra_record(command: DictConfig, run_dir: Path) -> Path | None:
    """Hydra's record of this command (config.yaml as composed, hydra.yaml, overrides.yaml),
    written by the job itself once it has passed its checks (`hydra.output_subdir` is null),
    so a refused start changes nothing in an existing directory. A resumed run records
    its command in `.hydra/resumed_<time>/`, keeping the run's original record."""
    if not HydraConfig.initialized():
        return None
    record = Path(run_dir) / ".hydra"
    if command.get("resume"):
        record = claim_directory(record / f"resumed_{datetime.now():%Y-%m-%d_%H-%M-%S}")
    record.mkdir(parents=True, exist_ok=True)
    hydra = HydraConfig.instance().cfg
    write_text_atomically(record / "config.yaml", OmegaConf.to_yaml(command))
    write_text_atomically(record / "hydra.yaml", OmegaConf.to_yaml(hydra))
    write_text_atomically(record / "overrides.yaml", OmegaConf.to_yaml(hydra.hydra.overrides.task))
    return record


def resume_command(run_dir: Path) -> str:
    """The command that continues the run in `run_dir`: `python train.py resume=<dir>`,
    plus the key overrides of this command if it was itself resuming (a fresh run's
    overrides are in its record already; a resumed run's are not)."""
    import shlex

    words = ["python", "train.py", f"resume={run_dir}"]
    if HydraConfig.initialized():
        overrides = list(HydraConfig.get().overrides.task)
        if any(o.startswith("resume=") for o in overrides):
            choices = HydraConfig.get().runtime.choices
            words += [o for o in overrides if not o.startswith("resume=")
                      and o.split("=", 1)[0].lstrip("+~") not in choices]
    return " ".join(shlex.quote(word) for word in words)


def run_choices(run_dir: Path) -> dict[str, str | list[str]]:
    """The config group choices a run was composed with (model=..., dataset=...), from
    Hydra's record; a list of options (callbacks=[default,quality]), which Hydra records
    as no choice, from the run's command line; empty for a run without a record."""
    record = Path(run_dir) / ".hydra" / "hydra.yaml"
    if not record.is_file():
        return {}
    hydra = OmegaConf.load(record).hydra
    choices = {group: option for group, option in (hydra.runtime.get("choices") or {}).items()
               if option is not None and group != "hydra" and not group.startswith("hydra/")}
    config = Path(run_dir) / ".hydra" / "config.yaml"
    config = OmegaConf.load(config) if config.is_file() else {}
    for override in hydra.overrides.get("task") or []:
        group, _, value = override.lstrip("+~").partition("=")
        # a list of a group's options composes a node of the config (a list value does not)
        if ("." not in group and value.startswith("[") and group not in choices
                and OmegaConf.is_dict(config.get(group))):
            choices[group] = [option.strip() for option in value.strip("[]").split(",")]
    return choices


def with_run_choices(args: list[str]) -> list[str]:
    """Command-line arguments that continue a run (`resume=<dir>`), with that run's own
    group choices (model=dcgan, dataset=..., ...) added where not given, so that Hydra
    composes the run's config and the run's own keys take overrides without `+`
    (`resume=<dcgan run> model.label_smoothing=0.1`). Other arguments: unchanged."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    resume = [a for a in args if a.startswith("resume=")]
    if not resume:
        return args
    try:
        run_dir = OverridesParser.create().parse_override(resume[-1]).value()
    except Exception:  # Hydra reports a malformed override itself
        return args
    given = {a.split("=", 1)[0].lstrip("+~") for a in args if "=" in a and a[0] != "-"}
    return [*args, *(f"{group}={as_override(option)}" for group, option in
                     run_choices(Path(str(run_dir))).items() if group not in given)]


def as_override(option: str | list[str]) -> str:
    return f"[{','.join(option)}]" if isinstance(option, list) else option
