"""Train a generative model: `python train.py model=dcgan dataset=fashion`.

Every option is a Hydra config under conf/; `python train.py --help` lists them.
"""

import logging
import sys

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from genmodels.config import task_function
from genmodels.errors import GenmodelsError


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> float | None:
    # Imported here, so that `--help` answers without loading PyTorch.
    from genmodels.training import optimized_value

    try:
        # The job: `genmodels.training.train` unless an experiment names another `task`.
        metrics = task_function(cfg.get("task", "genmodels.training.train"))(cfg)
        # Sweepers (e.g. Optuna) optimise the value returned here.
        return optimized_value(cfg, metrics)
    except GenmodelsError as error:
        if HydraConfig.get().mode == RunMode.MULTIRUN:
            # One job of a sweep failed: Hydra records it (Optuna: a failed trial) and the
            # sweep goes on with the next one.
            logging.getLogger(__name__).error("Error: %s", error)
            raise
        sys.exit(f"Error: {error}")


if __name__ == "__main__":
    main()
