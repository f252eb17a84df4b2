"""A quiet console: no library noise a user cannot act on. (That a whole run prints none
and ends with its summary: tests/test_training.py, the end-to-end train.py run.)"""

import subprocess
import sys
import warnings

from genmodels.engine.console import quiet_third_party

from .conftest import CONF


def test_only_the_named_warnings_are_silenced():
    # As torchmetrics' KernelInceptionDistance (evaluate.py with inception_weights) warns.
    from torchmetrics.utilities import rank_zero_warn

    kid_warning = ("Metric `Kernel Inception Distance` will save all extracted features in "
                   "buffer. For large datasets this may lead to large memory footprint.")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        quiet_third_party()
        rank_zero_warn(kid_warning, UserWarning)
        warnings.warn("`isinstance(treespec, LeafSpec)` is deprecated", stacklevel=1)
    # The LeafSpec filter names Lightning's module: the same words from here still show.
    assert [str(w.message) for w in caught] == ["`isinstance(treespec, LeafSpec)` is deprecated"]


def test_sweeps_do_not_print_alembics_plugin_setup():
    """Optuna imports alembic while a sweep starts, under Hydra's own logging config."""
    script = f"""
import logging.config
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
with initialize_config_dir(config_dir={str(CONF)!r}, version_base="1.3"):
    cfg = compose("config", return_hydra_config=True)
logging.config.dictConfig(OmegaConf.to_container(cfg.hydra.hydra_logging))
import alembic.autogenerate
logging.getLogger("genmodels").info("still shown")
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "still shown" in result.stdout and "setup plugin" not in result.stdout
