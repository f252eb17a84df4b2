"""Train a generative model: `python train.py model=dcgan dataset=fashion`.

Every option is a Hydra config under conf/; `python train.py --help` lists them.
"""

import sys

import hydra
from omegaconf import DictConfig

from genmodels.config import task_function
from genmodels.errors import GenmodelsError


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> float | None:
    try:
        # The job: `genmodels.training.train` unless an experiment names another `task`.
        metrics = task_function(cfg.get("task", "genmodels.training.train"))(cfg)
    except GenmodelsError as error:
        sys.exit(f"Error: {error}")
    # Sweepers (e.g. Optuna) optimise the value returned here.
    metric = cfg.get("optimized_metric")
    return metrics.get(metric) if metric else None


if __name__ == "__main__":
    main()
