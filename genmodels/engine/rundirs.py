"""Run directories: each new run or sweep claims its own, and nothing is written into one
until the run has passed its checks (conf/hydra/default.yaml)."""

import itertools
import logging
from datetime import datetime
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from hydra.core.utils import JobStatus
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf, open_dict, read_write

log = logging.getLogger(__name__)


def claim_directory(path: str | Path) -> Path:
    """Create `path`, or `path_2`, `path_3`, ... when it is taken, and return the one
    created. `mkdir` fails when the directory exists, so two runs started in the same
    second (or two jobs on a shared disk) can never get the same one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    for number in itertools.count(1):
        candidate = path if number == 1 else path.with_name(f"{path.name}_{number}")
        try:
            candidate.mkdir()
            return candidate
        except FileExistsError:
            continue


def given_on_command_line(config: DictConfig, key: str) -> bool:
    return any(o.split("=", 1)[0].lstrip("+~") == key for o in config.hydra.overrides.hydra)


def quoted(path: Path) -> str:
    """A path as a quoted value of a Hydra override."""
    return "'" + str(path).replace("\\", "\\\\").replace("'", "\\'") + "'"


class RunDirectory(Callback):
    """Hydra callback: a new run (or a sweep) claims its directory exclusively before Hydra
    uses it, adding `_2`, `_3`, ... to the name when it is taken. A directory given on the
    command line (`hydra.run.dir=...`, `hydra.sweep.dir=...`, or the run continued with
    `resume=`) is used as it is. A run that fails before it wrote anything there (a
    refused start) takes away the directory it created, so no empty run is left behind."""

    # The directory this process's run created, if any (one run per process).
    created: Path | None = None

    def on_run_start(self, config: DictConfig, **kwargs) -> None:
        run_dir = Path(str(config.hydra.run.dir))
        if config.get("resume") or given_on_command_line(config, "hydra.run.dir"):
            RunDirectory.created = None if run_dir.exists() else run_dir.absolute()
            return
        run_dir = claim_directory(run_dir)
        RunDirectory.created = run_dir.absolute()
        with read_write(config.hydra), open_dict(config.hydra):
            config.hydra.run.dir = str(run_dir)

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        if given_on_command_line(config, "hydra.sweep.dir"):
            return
        sweep_dir = claim_directory(str(config.hydra.sweep.dir))
        with read_write(config.hydra), open_dict(config.hydra):
            config.hydra.sweep.dir = str(sweep_dir)
            # Each job's config is composed again from these overrides (by every launcher,
            # also in other processes or on other machines): they must name the directory.
            config.hydra.overrides.hydra.append(f"hydra.sweep.dir={quoted(sweep_dir)}")

    def on_job_end(self, config: DictConfig, job_return, **kwargs) -> None:
        if job_return.status == JobStatus.FAILED:
            self.discard_if_unused()

    @staticmethod
    def discard_if_unused() -> None:
        """Remove the directory this run created if the run wrote nothing there but its
        log (it was refused before training)."""
        run_dir = RunDirectory.created
        if run_dir is None or not run_dir.is_dir():
            return
        job_log = run_dir / f"{HydraConfig.get().job.name}.log"
        if all(path == job_log for path in run_dir.iterdir()):
            root = logging.getLogger()
            for handler in list(root.handlers):  # Hydra's handler of that log
                if getattr(handler, "baseFilename", None) == str(job_log):
                    root.removeHandler(handler)
                    handler.close()
            job_log.unlink(missing_ok=True)
            run_dir.rmdir()
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
    (record / "config.yaml").write_text(OmegaConf.to_yaml(command))
    (record / "hydra.yaml").write_text(OmegaConf.to_yaml(hydra))
    (record / "overrides.yaml").write_text(OmegaConf.to_yaml(hydra.hydra.overrides.task))
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


def run_choices(run_dir: Path) -> dict[str, str]:
    """The config group choices a run was composed with (model=..., dataset=...), from
    Hydra's record; empty for a run without one."""
    record = Path(run_dir) / ".hydra" / "hydra.yaml"
    if not record.is_file():
        return {}
    choices = OmegaConf.load(record).hydra.runtime.get("choices") or {}
    return {group: option for group, option in choices.items()
            if option is not None and group != "hydra" and not group.startswith("hydra/")}


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
    return [*args, *(f"{group}={option}" for group, option in
                     run_choices(Path(str(run_dir))).items() if group not in given)]
