"""Metrics of a trained model: `python evaluate.py run=<run directory>`.

Writes <run>/evaluation/<checkpoint>_step<N>_<split>_<options digest>.json and logs to the
run's TensorBoard; options are in conf/evaluate.yaml (`python evaluate.py --help`).
"""

import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

from genmodels.config import check_overrides_compose
from genmodels.errors import GenmodelsError
from genmodels.files import check_working_directory


@hydra.main(version_base="1.3", config_path="conf", config_name="evaluate")
def main(cfg: DictConfig) -> float | None:
    from genmodels.jobs.evaluate import evaluate  # here, so that `--help` answers quickly

    try:
        result = evaluate(cfg)
    except GenmodelsError as error:
        sys.exit(f"Error: {error}")
    return result["metrics"].get("fd_classifier")


if __name__ == "__main__":
    try:  # an unknown option or key: one sentence with the closest match
        check_working_directory()
        check_overrides_compose(str(Path(__file__).parent / "conf"), "evaluate", sys.argv[1:])
    except GenmodelsError as error:
        sys.exit(f"Error: {error}")
    main()
