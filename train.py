"""Train a generative model: `python train.py model=dcgan dataset=fashion`.

Every option is a Hydra config under conf/; `python train.py --help` lists them.
"""

import logging
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from genmodels.config import check_overrides_compose, task_function
from genmodels.engine.rundirs import (
    RunDirectory,
    release_directory_locks,
    stop_on_sigterm,
    with_run_choices,
)
from genmodels.errors import GenmodelsError
from genmodels.jobs.sweeps import record_failed_job


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> float | None:
    # Imported here, so that `--help` answers without loading PyTorch.
    from genmodels.jobs.train import optimized_value

    if HydraConfig.get().mode == RunMode.RUN:
        stop_on_sigterm()  # a start stopped by SIGTERM is cleaned up as a refused one
    try:
        # The job: `genmodels.jobs.train.train` unless an experiment names another `task`.
        metrics = task_function(cfg.get("task", "genmodels.jobs.train.train"))(cfg)
        # Sweepers (e.g. Optuna) optimise the value returned here.
        return optimized_value(cfg, metrics)
    except Exception as error:
        user_error = isinstance(error, GenmodelsError)
        if HydraConfig.get().mode == RunMode.MULTIRUN:
            # One job of a sweep failed: the sweep goes on, and its table lists the job as
            # failed with this reason (Optuna records a failed trial). A bug keeps its
            # traceback, in the job's log.
            logging.getLogger(__name__).error("Error: %s", error, exc_info=not user_error)
            record_failed_job(error)
            return None
        RunDirectory.discard_if_unused()  # a refused start leaves no trace
        release_directory_locks()
        if not user_error:
            raise
        sys.exit(f"Error: {error}")


def run() -> None:
    # Continuing a run: Hydra composes that run's config groups (its model, dataset, ...).
    sys.argv[1:] = with_run_choices(sys.argv[1:])
    try:  # an unknown option or key: one sentence with the closest match
        check_overrides_compose(str(Path(__file__).parent / "conf"), "config", sys.argv[1:])
    except GenmodelsError as error:
        sys.exit(f"Error: {error}")
    main()


if __name__ == "__main__":
    run()
