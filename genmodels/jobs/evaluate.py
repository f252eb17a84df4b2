"""The job behind `evaluate.py`: metrics of a trained run, to a JSON file and TensorBoard.

`measure` computes every metric that applies to the model (also used during training by
`genmodels.callbacks.SampleQuality`):
- every model: `fd_classifier`, `kid_classifier`, precision/recall/density/coverage and
  mode coverage of `num_samples` samples against held-out real images, in the feature
  space of the project's own classifier (`genmodels.metrics.classifier`);
- conditional models (`sample` takes `labels`): the classifier's accuracy on samples of
  each requested class;
- models with `reconstruct`: the mean squared reconstruction error (pixels in [0, 1]);
- VAEs: the -ELBO and the importance-sampled negative log-likelihood
  (`genmodels.metrics.likelihood`), in nats per image;
- with `inception_weights=<file>`: Inception FID, KID and IS.
"""

import json
import logging
import time
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from genmodels.config import (
    build,
    check_override_types,
    check_whole_number,
    options_digest,
    refuse_added_keys,
)
from genmodels.engine.console import quiet_third_party
from genmodels.engine.hparams import curated_hparams, log_hparams_session
from genmodels.engine.rundirs import run_directory
from genmodels.engine.runs import checkpoint_of, model_from_checkpoint, read_checkpoint
from genmodels.errors import GenmodelsError
from genmodels.files import make_output_folder, write_text_atomically
from genmodels.metrics.classifier import classifier_for
from genmodels.metrics.inception import check_inception_available, inception_metrics
from genmodels.metrics.likelihood import importance_sampled_nll, negative_elbo
from genmodels.metrics.measure import measure, measured_samples
from genmodels.sampling import chosen_device, from_uint8, sampling_options

log = logging.getLogger(__name__)

# Every sample is kept in memory (KID and the class histogram need them all): beyond this
# the memory would grow for nothing, FID papers use 10,000 to 50,000.
MAX_SAMPLES = 100_000
# From this many samples on, the sampling shows a progress bar.
PROGRESS_FROM = 5_000


def vae_nll(model, images: torch.Tensor, k: int, batch_size: int, seed: int = 0) -> float:
    """The importance-sampled NLL (nats per image) of uint8 `images` (as the datasets hold
    them, already binarized for evaluation if the run binarizes), with `k` samples and
    `batch_size` decoder passes per forward, reproducible from `seed`."""
    generator = torch.Generator(device=model.device).manual_seed(seed)
    return importance_sampled_nll(model, from_uint8(model, images), k=k,
                                  batch_size=batch_size, generator=generator)


def vae_negative_elbo(model, images: torch.Tensor, seed: int = 0) -> float:
    """-ELBO (nats per image) of uint8 `images`, as the VAE's `recon + kl`, with the one
    posterior sample of each image drawn from `seed` (the global RNG is left as it was)."""
    devices = [model.device] if model.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        return negative_elbo(model, from_uint8(model, images))


def evaluate(cfg: DictConfig) -> dict:
    """Evaluate the run's checkpoint; write
    <run>/evaluation/<checkpoint>_step<N>_<split>_<options digest>.json and log the metrics
    to <run>/tensorboard/evaluation. Returns the JSON's content."""
    quiet_third_party()
    check_override_types()  # `num_samples=many`: one sentence, not a TypeError
    refuse_added_keys()  # `+metrics=[fid]`: nothing reads it
    if not 2 <= cfg.num_samples <= MAX_SAMPLES:
        raise GenmodelsError(
            f"num_samples must be between 2 and {MAX_SAMPLES:,} (all samples are kept in "
            f"memory), got {cfg.num_samples:,}."
        )
    # 0 epochs scored with an untrained classifier; a negative nll_samples skipped the NLL.
    for name, low in (("classifier_epochs", 1), ("nll_samples", 0), ("batch_size", 1)):
        check_whole_number(name, cfg[name], low)
    device = chosen_device(cfg.device)
    checkpoint_path = checkpoint_of(cfg)
    checkpoint = read_checkpoint(checkpoint_path)
    run_dir = run_directory(checkpoint_path)
    # Named by the checkpoint and its step, the split, and a digest of every other option:
    # different measurements never share a name.
    digest = options_digest(cfg, leave_out=("run", "ckpt", "out", "overwrite", "device",
                                            "classifier_cache", "batch_size"))
    name = (f"{checkpoint_path.stem}_step{checkpoint.get('global_step', 0)}_{cfg.split}"
            + {None: "", True: "_ema", False: "_live"}[cfg.ema] + f"_{digest}")
    json_path = Path(cfg.out) if cfg.out else run_dir / "evaluation" / f"{name}.json"
    if json_path.exists() and not cfg.overwrite:
        raise GenmodelsError(f"{json_path} already exists; refusing to overwrite it. Pass "
                             "overwrite=true, or out=<another .json path>.")
    make_output_folder(json_path.parent)
    if cfg.inception_weights:
        check_inception_available(cfg.inception_weights)  # fail before the long part
    config = checkpoint["genmodels_config"]
    model = model_from_checkpoint(checkpoint).to(device)
    sampling_options(model, temperature=cfg.temperature, ema=cfg.ema)  # clear errors first

    datamodule = build(config["dataset"])
    datamodule.setup()
    if cfg.split not in datamodule.splits:
        raise GenmodelsError(f"split={cfg.split!r}; valid choices: {sorted(datamodule.splits)}.")
    real, labels = (t.to(device) for t in datamodule.splits[cfg.split])
    labels = labels if (labels >= 0).all() else None
    classifier = classifier_for(datamodule, cfg.classifier_cache, epochs=cfg.classifier_epochs,
                                progress=True)
    classifier = classifier.to(device)
    long = cfg.num_samples >= PROGRESS_FROM
    if long:
        log.info("Sampling %d images, then measuring them...", cfg.num_samples)
    # Drawn once, for the classifier metrics and the Inception ones alike.
    started = time.perf_counter()
    fake = measured_samples(model, cfg.num_samples, seed=cfg.seed, temperature=cfg.temperature,
                            ema=cfg.ema, progress=long).to(device)
    sample_seconds = time.perf_counter() - started
    metrics = measure(model, classifier, real, labels, cfg.num_samples, seed=cfg.seed,
                      temperature=cfg.temperature, ema=cfg.ema, samples=fake)
    if hasattr(model, "posterior"):
        metrics["neg_elbo"] = vae_negative_elbo(model, real, seed=cfg.seed)
        if cfg.nll_samples > 0:
            metrics["nll_importance_sampled"] = vae_nll(model, real, k=cfg.nll_samples,
                                                        batch_size=cfg.batch_size, seed=cfg.seed)
    if cfg.inception_weights:
        metrics |= inception_metrics(cfg.inception_weights, real, fake, seed=cfg.seed)
    else:
        log.info("Inception FID/KID/IS skipped: they need the FID Inception weights, which "
                 "cannot be downloaded offline; give inception_weights=<path to the .pth>.")

    result = {"checkpoint": str(checkpoint_path.resolve()),
              "global_step": checkpoint.get("global_step"), "epoch": checkpoint.get("epoch"),
              "split": cfg.split, "num_real": len(real), "num_samples": cfg.num_samples,
              "seed": cfg.seed, "temperature": cfg.temperature, "ema": cfg.ema,
              "sample_seconds": sample_seconds, "device": str(device), "metrics": metrics}
    json_path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomically(json_path, json.dumps(result, indent=2) + "\n")
    log_to_tensorboard(run_dir, name, config, metrics, checkpoint.get("global_step") or 0)
    log.info("Metrics: %s", ", ".join(f"{k}={v:.4g}" for k, v in metrics.items()))
    log.info("Wrote %s", json_path)
    return result


def log_to_tensorboard(run_dir: Path, name: str, config: dict, metrics: dict,
                       step: int) -> None:
    """Scalars `eval/<metric>` in <run>/tensorboard/evaluation/<name>, and the same numbers
    (`hp/eval/<metric>`) in the run's own HPARAMS row beside its final training metrics,
    so that a sweep's runs are ranked by them (the row shows the latest evaluation; each
    one's JSON file keeps it)."""
    from torch.utils.tensorboard import SummaryWriter

    with SummaryWriter(str(run_dir / "tensorboard" / "evaluation" / name)) as writer:
        for metric, value in metrics.items():
            writer.add_scalar(f"eval/{metric}", float(value), step)
    logged = run_dir / "tensorboard" / "hparams.yaml"  # what training logged, if anything
    hparams = OmegaConf.to_container(OmegaConf.load(logged)) if logged.is_file() else None
    summary = run_dir / "summary.json"
    trained = json.loads(summary.read_text()).get("metrics", {}) if summary.is_file() else {}
    row = {f"hp/{k}": v for k, v in trained.items()
           if k.startswith(("val/", "test/")) and v is not None}
    row |= {f"hp/eval/{k}": float(v) for k, v in metrics.items()}
    log_hparams_session(run_dir / "tensorboard" / "hparams",
                        hparams or curated_hparams(config, run_dir), row, step)
