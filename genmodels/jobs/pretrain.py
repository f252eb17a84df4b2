"""Unsupervised pretraining: does an autoencoder's encoder help when labels are few?

`python train.py experiment=pretrain_classifier` (conf/experiment/pretrain_classifier.yaml)
runs `pretrain_classifier`: (1) train `cfg.model`, an autoencoder, on all training images
(labels unused), exactly as `train` would; (2) train a classifier that reuses its encoder
on only `pretrain.num_labelled` labelled training images; (3) train the same classifier
from a freshly initialised encoder on the same images; report both test accuracies
(Geron, Hands-On ML, ch. 17, "Unsupervised Pretraining Using Stacked Autoencoders").
"""

import copy
import logging
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from omegaconf import DictConfig, open_dict

from genmodels.config import build
from genmodels.data import InMemoryImageDataModule
from genmodels.engine.divergence import DivergenceGuard
from genmodels.engine.hparams import curated_hparams, log_hparams_session
from genmodels.engine.model_summary import ModelSummary
from genmodels.engine.rundirs import save_hydra_record
from genmodels.engine.runs import load_model
from genmodels.errors import GenmodelsError, TrainingDiverged
from genmodels.jobs.train import save_summary, train

log = logging.getLogger(__name__)


def keep_labelled_subset(datamodule: InMemoryImageDataModule, n: int, seed: int) -> None:
    """Shrink the training split to n labelled images chosen at random (validation and
    test splits stay whole)."""
    datamodule.setup()
    images, labels = datamodule.splits["train"]
    labelled = (labels >= 0).nonzero().squeeze(1)
    if n < 1 or n > len(labelled):
        raise GenmodelsError(
            f"pretrain.num_labelled={n}, but the training split has {len(labelled)} labelled "
            "images; choose between 1 and that number (unlabelled data has no classes)."
        )
    order = torch.randperm(len(labelled), generator=torch.Generator().manual_seed(seed))
    chosen = labelled[order[:n].to(labelled.device)]
    datamodule.splits["train"] = (images[chosen], labels[chosen])


def fit_classifier(cfg: DictConfig, name: str, encoder: torch.nn.Module, freeze: bool,
                   datamodule, num_classes: int, output_dir: Path) -> float:
    """Train and test one classifier; returns its test accuracy."""
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    settings = cfg.pretrain
    classifier = build(settings.classifier)(encoder=encoder, num_classes=num_classes,
                                            freeze_encoder=freeze)
    # A NaN or infinite loss or weight stops training with a message naming this one of
    # the two classifiers, rather than reporting the accuracy of NaN logits as a result.
    classifier.watched_for_divergence = {"loss": f"loss of the classifier with the {name} "
                                                 "encoder"}
    logger = TensorBoardLogger(output_dir, name=f"classifier_{name}", version="",
                               default_hp_metric=False)
    callbacks = [DivergenceGuard()]
    if cfg.trainer.get("enable_model_summary", True):
        # In place of Lightning's (below), which shows FLOPs, as train.py's runs do.
        callbacks.append(ModelSummary())
    trainer = build(cfg.trainer, max_epochs=settings.classifier_epochs, logger=logger,
                    callbacks=callbacks, enable_checkpointing=False, max_steps=-1,
                    check_val_every_n_epoch=settings.get("val_every_n_epochs", 1),
                    enable_model_summary=False)
    log.info("Classifier with the %s encoder on %d labelled images.", name,
             len(datamodule.splits["train"][0]))
    trainer.fit(classifier, datamodule=datamodule)
    trainer.test(classifier, datamodule=datamodule, verbose=False)
    return float(trainer.callback_metrics["test/acc"])


def pretrain_classifier(cfg: DictConfig) -> dict[str, float]:
    output_dir = Path(cfg.paths.output_dir)
    settings = cfg.pretrain

    # 1. The autoencoder on every training image, as `python train.py` would train it.
    autoencoder_cfg = copy.deepcopy(cfg)
    with open_dict(autoencoder_cfg):
        autoencoder_cfg.paths.output_dir = str(output_dir / "autoencoder")
    log.info("Phase 1/3: autoencoder %s on all training images.", cfg.model._target_)
    try:
        metrics = {f"autoencoder/{k}": v for k, v in train(autoencoder_cfg).items()
                   if k.startswith(("val/", "test/"))}
    except TrainingDiverged:
        # The run's own summary.json (its phases keep theirs), for a sweep's table.
        save_summary({}, cfg, None, output_dir, status="diverged")
        raise
    save_hydra_record(cfg, output_dir)  # phase 1 passed the run's checks
    autoencoder = load_model(output_dir / "autoencoder")
    if not hasattr(autoencoder, "encoder"):
        raise GenmodelsError(f"model {cfg.model._target_} has no encoder to reuse; use an "
                             "autoencoder model (ae, conv_ae, ...) for this experiment.")

    # 2. and 3. The same classifier, pretrained encoder vs fresh one, on the same images.
    datamodule = build(cfg.dataset)
    keep_labelled_subset(datamodule, settings.num_labelled, cfg.seed)
    num_classes = int(datamodule.num_classes)
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    fresh_encoder = build(cfg.model.encoder)
    accuracy = {}
    log.info("Phase 2/3: classifier reusing the pretrained encoder (%s).",
             "frozen" if settings.freeze_encoder else "fine-tuned")
    accuracy["pretrained"] = fit_classifier(cfg, "pretrained", autoencoder.encoder.train(),
                                            settings.freeze_encoder, datamodule, num_classes,
                                            output_dir)
    log.info("Phase 3/3: the same classifier from scratch.")
    accuracy["scratch"] = fit_classifier(cfg, "scratch", fresh_encoder, False, datamodule,
                                         num_classes, output_dir)

    metrics |= {f"{name}/test/acc": value for name, value in accuracy.items()}
    save_summary(metrics, cfg, None, output_dir)
    summary = TensorBoardLogger(output_dir, name="comparison", version="")
    summary.log_metrics({f"test_acc/{name}": value for name, value in accuracy.items()})
    summary.finalize("success")
    # The run's HPARAMS row (phase 1's, replaced): both accuracies beside the autoencoder's.
    hparams = curated_hparams(cfg, output_dir) | {
        "pretrain.num_labelled": settings.num_labelled,
        "pretrain.freeze_encoder": bool(settings.freeze_encoder)}
    log_hparams_session(output_dir / "autoencoder" / "tensorboard" / "hparams", hparams,
                        {f"hp/{name}": value for name, value in metrics.items()})
    frozen = "frozen" if settings.freeze_encoder else "fine-tuned"
    log.info("Test accuracy with %d labelled training images:\n"
             "  %-48s %.4f\n  %-48s %.4f", settings.num_labelled,
             f"encoder pretrained as an autoencoder ({frozen})", accuracy["pretrained"],
             "the same classifier from scratch", accuracy["scratch"])
    log.info("Run directory: %s", output_dir.resolve())
    return metrics
