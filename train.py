"""Train a generative model: `python train.py model=dcgan dataset=fashion`.

Every option is a Hydra config under conf/; `python train.py --help` lists them.
"""

import logging
import os
import shutil
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from genmodels.config import check_overrides_compose, task_function
from genmodels.data.downloads import check_data_available
from genmodels.engine.rundirs import (
    RunDirectory,
    StoppedBySignal,
    release_directory_locks,
    stop_on_sigterm,
    with_run_choices,
)
from genmodels.errors import GenmodelsError
from genmodels.files import check_working_directory
from genmodels.jobs.sweeps import (
    SearchStopped,
    SweepSummary,
    finish_unfinished_sweep,
    record_failed_job,
    search_ended_without_a_result,
    search_stop,
)


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> float | None:
    try:
        if not cfg.get("resume") and first_process_of_node():
            # A dataset that is neither there nor downloadable, in seconds: before Lightning
            # and the models load. (A resumed run's data keys are read from its own config.)
            check_data_available(cfg.dataset)
        # Imported here, so that `--help` answers without loading PyTorch.
        from genmodels.jobs.train import optimized_value

        # The job: `genmodels.jobs.train.train` unless an experiment names another `task`.
        metrics = task_function(cfg.get("task", "genmodels.jobs.train.train"))(cfg)
        # Sweepers (e.g. Optuna) optimise the value returned here; None: a diverged run.
        value = optimized_value(cfg, metrics)
        if value is None and HydraConfig.get().mode == RunMode.MULTIRUN and (
                stop := search_ended_without_a_result()) is not None:
            raise stop
        return value
    except Exception as error:
        user_error = isinstance(error, GenmodelsError)
        if HydraConfig.get().mode == RunMode.MULTIRUN:
            # One job of a sweep failed: its table lists the job as failed with this
            # reason. A bug keeps its traceback, in the job's log. The sweep goes on
            # (Optuna records a failed trial), unless a search's trial was refused
            # before training (the next trials would be refused alike), or it was the
            # search's last and none completed.
            logging.getLogger(__name__).error("Error: %s", error, exc_info=not user_error)
            record_failed_job(error)
            if (stop := search_stop(error, RunDirectory.trained)
                    or search_ended_without_a_result()) is not None:
                raise stop from error
            return None
        RunDirectory.discard_if_unused()  # a refused start leaves no trace
        release_directory_locks()
        if not user_error:
            raise
        sys.exit(f"Error: {error}")


def first_process_of_node() -> bool:
    """Not one of the processes DDP starts beside the first, nor a later task of a SLURM
    node: those leave downloads to the first (as Lightning's prepare_data does)."""
    return os.environ.get("LOCAL_RANK", "0") == "0" and os.environ.get("SLURM_LOCALID",
                                                                          "0") == "0"


def run() -> None:
    try:
        check_working_directory()  # before PyTorch loads: from a deleted folder it cannot
    except GenmodelsError as error:
        sys.exit(f"Error: {error}")
    # Continuing a run: Hydra composes that run's config groups (its model, dataset, ...).
    sys.argv[1:] = with_run_choices(sys.argv[1:])
    try:  # an unknown option or key: one sentence with the closest match
        check_overrides_compose(str(Path(__file__).parent / "conf"), "config", sys.argv[1:])
    except GenmodelsError as error:
        sys.exit(f"Error: {error}")
    if "hydra/launcher=slurm" in sys.argv[1:] and shutil.which("srun") is None:
        # submitit's own refusal is a traceback, after the sweep's directory is made.
        sys.exit("Error: hydra/launcher=slurm submits the jobs to SLURM, whose srun is not "
                 "on this machine: start the sweep on the cluster's login node.")
    stop_on_sigterm()  # outside Lightning's fit: a start is cleaned up, a sweep's tables written
    try:
        main()
    except StoppedBySignal:
        RunDirectory.discard_if_unused()  # this start's run directory, if it never trained
        sys.exit("Error: Stopped by SIGTERM" + (
            "; the sweep's tables list the jobs that ran." if SweepSummary.unfinished
            else "; the run's checkpoints are kept." if RunDirectory.trained
            else " before the first training step: nothing of this start is kept."))
    except SearchStopped as stop:
        logging.getLogger(__name__).info("Search stopped at %s, %s.", stop.job, stop.why)
        sys.exit(f"Error: {stop}")  # after the sweep's tables (finally, below)
    finally:
        # A sweep that ended early (Optuna without a completed trial, Ctrl-C) skipped
        # Hydra's end-of-sweep callbacks: its table is written all the same.
        finish_unfinished_sweep()
        release_directory_locks()


if __name__ == "__main__":
    run()
