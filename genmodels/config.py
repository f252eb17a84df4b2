"""Building objects from Hydra config nodes, with user errors kept readable."""

import math
import re
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


# The precisions genmodels trains and tests in (and Lightning's short spellings of them).
PRECISIONS = ("32-true", "16-mixed", "bf16-mixed", "32", "16", "bf16", 32, 16)
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


def check_whole_number(name: str, value, low: int, high: int | None = None,
                       note: str = "") -> None:
    """Stop with one sentence unless `value` is a whole number (not a float or a bool)
    from `low` to `high`."""
    if type(value) is int and low <= value and (high is None or value <= high):
        return
    span = f"from {low} to {high}" if high is not None else f"of at least {low}"
    raise GenmodelsError(f"{name} must be a whole number {span}{note}, got {value!r}.")


def check_run_options(cfg) -> None:
    """Stop with one sentence on a run option Lightning or PyTorch would reject with a
    traceback, or take silently: the seed, precision, validation interval, compile mode."""
    check_whole_number("seed", cfg.get("seed"), 0, 2**32 - 1)
    precision = cfg.trainer.get("precision", "32-true")
    if precision not in PRECISIONS:
        raise GenmodelsError(f"trainer.precision={precision!r} is not one genmodels trains in; "
                             f"valid choices: {', '.join(map(str, PRECISIONS[:3]))}.")
    every = cfg.trainer.get("check_val_every_n_epoch", 1)
    if every is not None:
        check_whole_number("trainer.check_val_every_n_epoch", every, 1,
                           note=" (or null: never validate)")
    mode = (cfg.get("speed") or {}).get("compile_mode")
    if mode is not None and mode not in COMPILE_MODES:
        raise GenmodelsError(f"speed.compile_mode={mode!r}; valid choices: "
                             f"{', '.join(COMPILE_MODES)} (or null: torch's default).")


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


def options_digest(cfg, leave_out: tuple[str, ...]) -> str:
    """Six hex digits that change with any option of `cfg` but those in `leave_out`: a
    short name for a combination of options, so that different outputs never share a
    file name."""
    import hashlib
    import json

    options = {k: v for k, v in OmegaConf.to_container(cfg, resolve=True).items()
               if k not in leave_out}
    text = json.dumps(options, sort_keys=True, default=str)
    return hashlib.sha1(text.encode()).hexdigest()[:6]


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


def refuse_added_keys() -> None:
    """Stop with one sentence on a key added with `+` (`+metrics=[fid]`) to a command whose
    options are all in its config: nothing would read it."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return
    added = [o for o in HydraConfig.get().overrides.task if o.startswith("+")]
    if added:
        raise GenmodelsError(f"{' '.join(added)}: this command takes no new keys, only its "
                             f"own (see --help); nothing would read "
                             f"{added[0].split('=')[0].lstrip('+')}.")


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


def name_suffix(name) -> str:
    """Config resolver: `${name_suffix:${name}}` is `_<name>` for a run named with
    name=<name>, nothing without one; conf/hydra/default.yaml ends run directories in it.
    Characters other than letters, digits, '.', '_' and '-' (a '/', spaces) become '-'."""
    if name is None or str(name) == "":
        return ""
    return "_" + re.sub(r"[^A-Za-z0-9._-]+", "-", str(name))


# Registered on import (train.py imports this module before Hydra composes the config).
OmegaConf.register_new_resolver("if_resuming", if_resuming, replace=True)
OmegaConf.register_new_resolver("name_suffix", name_suffix, replace=True)


SWEEP_FUNCTIONS = re.compile(r"\s*(choice|range|interval|glob|tag)\(")


def is_sweep(arg: str) -> bool:
    """Whether an override sweeps (`model=ae,vae`, `lr=choice(1e-3,1e-4)`), rather than
    giving one value, a list included (`widths=[16,8]`)."""
    value = arg.split("=", 1)[-1]
    if SWEEP_FUNCTIONS.match(value):
        return True
    depth, quote = 0, None
    for char in value:
        if quote:
            quote = None if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char in "[{(":
            depth += 1
        elif char in "]})":
            depth -= 1
        elif char == "," and depth == 0:
            return True
    return False


def check_overrides_compose(config_dir: str, config_name: str, args: list[str]) -> None:
    """Compose `config_name` with the command line's overrides as Hydra is about to, and
    stop with one sentence on an unknown config group option (`model=vea`) or key
    (`trainer.max_epoch=3`), naming the closest match and the valid choices; Hydra's own
    message names neither the closest match nor, for a key, the valid ones. Command lines
    with flags (`-m`, `--help`, ...) or sweeps, and other errors, are left to Hydra."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.errors import (
        ConfigCompositionException,
        MissingConfigException,
        OverrideParseException,
    )
    from omegaconf.errors import ConfigAttributeError, ConfigKeyError

    if any(arg.startswith("-") or is_sweep(arg) for arg in args):
        return
    overrides = [arg for arg in args if not arg.startswith("hydra.")]
    GlobalHydra.instance().clear()
    message = None
    try:
        with initialize_config_dir(config_dir=config_dir, version_base="1.3"):
            try:
                compose(config_name, overrides=overrides)
            except MissingConfigException as error:
                group = (error.missing_cfg_file or "").rsplit("/", 1)[0]
                given = [a.split("=", 1)[1] for a in overrides
                         if a.split("=")[0].lstrip("+~") == group]
                if given and error.options:
                    message = (f"Unknown {group}={given[-1]}{closest(given[-1], error.options)}; "
                               f"valid choices: {', '.join(error.options)}.")
            except ConfigCompositionException as error:
                cause = error.__cause__
                if isinstance(cause, (ConfigAttributeError, ConfigKeyError)) and cause.full_key:
                    rest = [a for a in overrides if a.split("=")[0] != cause.full_key]
                    message = unknown_key_message(cause.full_key, compose(config_name, rest))
            except OverrideParseException:
                tilde = [a for a in overrides if "=~" in a]
                if tilde:  # `data_dir=~/photos`: Hydra's grammar reserves a leading ~
                    key, value = tilde[0].split("=", 1)
                    message = (f"Hydra cannot read {tilde[0]}: quote a value that starts "
                               f"with ~, as in '{key}=\"{value}\"' (genmodels expands ~ and "
                               f"$VARIABLES in paths).")
            except Exception:  # everything else: Hydra says it as it will
                pass
    finally:
        GlobalHydra.instance().clear()
    if message:
        raise GenmodelsError(message)


# One coding size, two names: autoencoders say codings_dim, VAEs and GANs latent_dim.
SYNONYMS = {"latent_dim": "codings_dim", "codings_dim": "latent_dim"}


def unknown_key_message(full_key: str, config) -> str:
    parent, _, key = full_key.rpartition(".")
    node = OmegaConf.select(config, parent) if parent else config
    keys = sorted(node.keys()) if hasattr(node, "keys") else []
    where = f"under {parent}" if parent else "at the top level"
    hint = (f" (this model calls it {parent}.{SYNONYMS[key]})" if SYNONYMS.get(key) in keys
            else closest(key, keys, parent))
    return (f"Unknown key {full_key}{hint}; valid keys {where}: "
            f"{', '.join(keys)} (to add a new key, write +{full_key}=...).")


def closest(word: str, choices, parent: str = "") -> str:
    """' (did you mean X?)' for the choice nearest to `word`, if one is near."""
    import difflib

    match = difflib.get_close_matches(word, [str(c) for c in choices], n=1, cutoff=0.6)
    prefix = f"{parent}." if parent else ""
    return f" (did you mean {prefix}{match[0]}?)" if match else ""
