"""Building objects from Hydra config nodes, with user errors kept readable."""

import math
from collections.abc import Callable

from hydra.errors import InstantiationException
from hydra.utils import get_method, instantiate
from omegaconf import OmegaConf

from genmodels.errors import GenmodelsError


def build(node, **kwargs):
    """`hydra.utils.instantiate`, but a GenmodelsError raised by the object being built
    surfaces as itself rather than wrapped in Hydra's exception chain."""
    try:
        return instantiate(node, **kwargs)
    except InstantiationException as error:
        cause = error.__cause__
        while cause is not None:
            if isinstance(cause, GenmodelsError):
                raise cause from None
            cause = cause.__cause__
        raise


def task_function(path: str) -> Callable:
    """The job that `train.py` runs, named by the config's `task` key (a dotted path to a
    function of the config that returns a metrics dict), e.g. genmodels.jobs.train.train."""
    try:
        return get_method(path)
    except Exception:
        raise GenmodelsError(
            f"task={path!r} is not an importable function; use genmodels.jobs.train.train or "
            "genmodels.jobs.pretrain.pretrain_classifier."
        ) from None


def check_accelerator(trainer) -> None:
    """Stop with one sentence when the trainer asks for a CUDA GPU that this machine lacks
    (`trainer=gpu`, `trainer=ddp`), or for more GPUs than it has, instead of Lightning's
    traceback."""
    import torch  # here: `--help` answers without loading PyTorch

    accelerator, devices = trainer.get("accelerator", "auto"), trainer.get("devices", "auto")
    if accelerator not in ("gpu", "cuda"):
        return
    if not torch.cuda.is_available():
        if accelerator == "gpu" and torch.backends.mps.is_available():
            return  # Lightning's "gpu" is Apple's MPS there
        raise GenmodelsError(
            f"trainer.accelerator={accelerator} needs a CUDA GPU and this machine has none: "
            "use trainer=cpu, or trainer=ddp_cpu for data parallel training in CPU processes."
        )
    available = torch.cuda.device_count()
    if isinstance(devices, int) and devices > available:
        raise GenmodelsError(
            f"trainer.devices={devices} asks for more GPUs than the {available} this machine "
            f"has: use trainer.devices={available} (or -1 for all of them)."
        )


def check_learning_rates(node, path: str = "model") -> None:
    """Stop with one sentence on a learning rate that is not a finite number >= 0
    (`model.optimizer.lr=nan`, `-1`, `inf`), before the model is built; torch.optim would
    raise deep inside Lightning's setup, or train on NaN."""
    container = node if isinstance(node, dict | list) else OmegaConf.to_container(
        node, resolve=True)
    items = container.items() if isinstance(container, dict) else enumerate(container)
    for key, value in items:
        if isinstance(value, dict | list):
            check_learning_rates(value, f"{path}.{key}")
        elif key == "lr" and isinstance(container, dict) and "_target_" in container:
            if isinstance(value, bool) or not isinstance(value, int | float) or not (
                    math.isfinite(value) and value >= 0):
                raise GenmodelsError(
                    f"{path}.lr={value} is not a learning rate: give a finite number >= 0 "
                    "(e.g. 1e-3)."
                )


def check_override_types() -> None:
    """Stop with one sentence when a command-line `key=value` has another type than the
    key's default (`trainer.max_epochs=ten`, `dataset.batch_size=1.5`), before anything is
    built: the configs are plain YAML, so nothing else would catch it early."""
    from hydra import compose
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig
    from hydra.core.override_parser.overrides_parser import OverridesParser

    if not (HydraConfig.initialized() and GlobalHydra.instance().is_initialized()):
        return
    overrides = OverridesParser.create().parse_overrides(HydraConfig.get().overrides.task)
    loader = GlobalHydra.instance().config_loader()
    is_group = {o.input_line: bool(loader.get_group_options(o.key_or_group)) for o in overrides}
    groups = [line for line, group in is_group.items() if group]
    defaults = compose(config_name=HydraConfig.get().job.config_name, overrides=groups)
    for override in overrides:
        if is_group[override.input_line] or override.is_sweep_override():
            continue
        default = OmegaConf.select(defaults, override.key_or_group, default=None,
                                   throw_on_resolution_failure=False)
        expected = type_name(default)
        if expected and not type_fits(override.value(), default):
            raise GenmodelsError(
                f"{override.input_line} has the wrong type: {override.key_or_group} takes "
                f"{expected} (default {default!r}), got {override.value()!r}."
            )


def type_name(default) -> str | None:
    """The kind of value a key takes, judged by its default; None: anything goes."""
    if isinstance(default, bool):
        return "true or false"
    if isinstance(default, int):
        return "an integer"
    if isinstance(default, float):
        return "a number"
    if OmegaConf.is_list(default):
        return "a list such as [1, 2]"
    return None


def type_fits(value, default) -> bool:
    if value is None:
        return True
    if isinstance(default, bool):
        return isinstance(value, bool)
    if isinstance(default, int):
        return isinstance(value, int) and not isinstance(value, bool)
    if isinstance(default, float):
        return isinstance(value, int | float) and not isinstance(value, bool)
    return isinstance(value, list)


def if_resuming(resume, resuming_value, fresh_value):
    """Config resolver: `${if_resuming:${resume},a,b}` is a when resume=<run dir> is set.
    conf/hydra/default.yaml uses it to keep a resumed run in its own directory."""
    return resuming_value if resume else fresh_value


# Registered on import (train.py imports this module before Hydra composes the config).
OmegaConf.register_new_resolver("if_resuming", if_resuming, replace=True)
