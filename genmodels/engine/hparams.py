"""What a run shows in TensorBoard's HPARAMS view: a short, flat set of hyperparameters
and its final metrics.

TensorBoard's hparams plugin takes its columns from the first "experiment" summary it finds
in the log directory, so runs of different model families (whose metrics differ) would hide
each other's metrics. Each run therefore writes only a session (its hyperparameters, then
its final metrics and status) and no experiment summary: the plugin then builds the columns
from every session's hyperparameters and every metric logged in a session's run directory.
The session lives in its own run directory (`tensorboard/hparams`), so the metric columns
are the final metrics only, not every training curve.
"""

from pathlib import Path

from omegaconf import DictConfig, OmegaConf

# Trainer settings that tell runs apart; the rest of the trainer node is plumbing.
TRAINER_KEYS = ("precision", "devices", "num_nodes", "accelerator", "max_epochs", "max_steps")
DATASET_KEYS = ("image_size", "channels", "batch_size", "binarize")


def curated_hparams(cfg: DictConfig | dict, run_dir: str | Path | None = None) -> dict:
    """The hyperparameters worth a column: the model's and dataset's names (the config
    choices, e.g. `vae`, `digits`), the model's own hyperparameters including its
    optimizers and learning rates (`model.optimizer: RMSprop`, `model.optimizer.lr`),
    the dataset's size and batch size, the trainer's precision and devices, and the seed.

    Keys that only copy another key (`${...}` interpolations, such as a decoder's
    `latent_dim`) and `_target_`/`_partial_` keys are left out; lists become strings.
    """
    cfg = cfg if OmegaConf.is_config(cfg) else OmegaConf.create(cfg)
    names = config_choices(run_dir)
    hparams = {"model": names.get("model") or class_name(cfg.model),
               "dataset": names.get("dataset") or class_name(cfg.dataset)}
    if names.get("experiment"):
        hparams["experiment"] = names["experiment"]
    hparams |= flat_settings(cfg.model, "model")
    for key in DATASET_KEYS:
        if key in cfg.dataset:
            hparams[f"dataset.{key}"] = cfg.dataset[key]
    for key in TRAINER_KEYS:
        if key in cfg.trainer:
            hparams[f"trainer.{key}"] = cfg.trainer[key]
    hparams["seed"] = cfg.get("seed")
    hparams["name"] = cfg.get("name")
    if cfg.get("tags"):
        hparams["tags"] = ",".join(map(str, cfg.tags))
    return {key: tensorboard_value(value) for key, value in hparams.items()
            if value is not None}


def flat_settings(node: DictConfig, prefix: str) -> dict:
    """`prefix.key: value` for the settings under `node`; a nested object (an optimizer,
    an encoder) gives its class name under its own key and its settings below it."""
    settings = {}
    for key in node:
        if str(key).startswith("_") or OmegaConf.is_interpolation(node, key):
            continue
        value = node[key]
        name = f"{prefix}.{key}"
        if OmegaConf.is_dict(value):
            if "_target_" in value:
                settings[name] = value._target_.rsplit(".", 1)[-1]
            settings |= flat_settings(value, name)
        else:
            settings[name] = OmegaConf.to_container(value) if OmegaConf.is_list(value) else value
    return settings


def tensorboard_value(value):
    """TensorBoard takes numbers, strings and booleans; lists become their text."""
    return value if isinstance(value, (bool, int, float, str)) else str(value)


def class_name(node: DictConfig) -> str:
    return str(node.get("_target_", "?")).rsplit(".", 1)[-1]


def config_choices(run_dir: str | Path | None) -> dict:
    """The config groups a run was started with (`model: vae`, ...): from the run's own
    Hydra record, which a resumed run keeps, else from the running Hydra app."""
    record = Path(run_dir) / ".hydra" / "hydra.yaml" if run_dir else None
    if record is not None and record.is_file():
        choices = OmegaConf.load(record).hydra.runtime.choices
        return {str(k): v for k, v in choices.items()}
    from hydra.core.hydra_config import HydraConfig

    if HydraConfig.initialized():
        return {str(k): v for k, v in HydraConfig.get().runtime.choices.items()}
    return {}


def log_hparams_session(session_dir: str | Path, hparams: dict, metrics: dict[str, float],
                        step: int = 0) -> None:
    """One HPARAMS row: a TensorBoard run `session_dir` with `hparams` and the scalars
    `metrics`, and no experiment summary (see the module docstring).

    A session already there (a resumed run's first one, an evaluation written again with
    overwrite=true) is replaced: TensorBoard shows one row per directory, with the
    hyperparameters of its first session, so a resumed run kept its old max_epochs. The
    new session is written first, then the earlier files that hold a session are removed;
    any other file is left alone."""
    from torch.utils.tensorboard import SummaryWriter
    from torch.utils.tensorboard.summary import hparams as hparams_summaries

    earlier = [path for path in Path(session_dir).glob("events.out.tfevents.*")
               if holds_session(path)]
    _, start, end = hparams_summaries(hparams, metrics)
    with SummaryWriter(str(session_dir)) as writer:
        writer.file_writer.add_summary(start, step)
        for name, value in metrics.items():
            writer.add_scalar(name, value, step)
        writer.file_writer.add_summary(end, step)
    for path in earlier:
        path.unlink()


def holds_session(event_file: Path) -> bool:
    """Whether a TensorBoard event file starts an HPARAMS session."""
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader
    from tensorboard.plugins.hparams.metadata import SESSION_START_INFO_TAG

    return any(value.tag == SESSION_START_INFO_TAG
               for event in EventFileLoader(str(event_file)).Load()
               for value in event.summary.value)

