"""Images from a trained model: `python generate.py run=<run directory> num=64 seed=0`.

Options are in conf/generate.yaml (`python generate.py --help`); reconstructions of given
images: `python generate.py run=<run dir> task=reconstruct images=[a.png,b.png]`.
"""

import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

from genmodels.config import check_overrides_compose
from genmodels.errors import GenmodelsError
from genmodels.files import check_working_directory


@hydra.main(version_base="1.3", config_path="conf", config_name="generate")
def main(cfg: DictConfig) -> None:
    from genmodels.jobs.generate import generate  # here, so that `--help` answers quickly

    try:
        generate(cfg)
    except GenmodelsError as error:
        sys.exit(f"Error: {error}")


if __name__ == "__main__":
    try:  # an unknown option or key: one sentence with the closest match
        check_working_directory()
        check_overrides_compose(str(Path(__file__).parent / "conf"), "generate", sys.argv[1:])
    except GenmodelsError as error:
        sys.exit(f"Error: {error}")
    main()
