"""The autoencoder family and its tools: each model learns, and each does what it claims."""

import logging
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.linalg import subspace_angles
from sklearn.decomposition import PCA
from torch import nn
from torch.distributions import Bernoulli, kl_divergence
from torchvision.io import read_image

from genmodels.config import build
from genmodels.data import DigitsDataModule
from genmodels.errors import GenmodelsError
from genmodels.jobs.pretrain import pretrain_classifier
from genmodels.jobs.train import train

from .conftest import FAST, compose_config
from .test_training import (
    dataset_args,
    image_folder,  # noqa: F401  (a fixture)
    read_metrics,
    step_values,
)

NEW_MODELS = ["linear_ae", "tied_ae", "greedy_ae", "conv_ae", "recurrent_ae", "denoising_ae",
              "sparse_ae"]
# Narrower networks where the full-size ones are slow on CPU; the architecture is the same.
SMALLER = {"greedy_ae": ["model.epochs_per_phase=1"],
           "recurrent_ae": ["model.encoder.hidden_sizes=[32]", "model.decoder.hidden_sizes=[32]"],
           "conv_ae": ["model.encoder.widths=[8,16]", "model.decoder.widths=[16,8]"]}


def digits_batch(n=64, seed=0):
    dm = DigitsDataModule(batch_size=n, seed=seed)
    dm.setup()
    return dm.on_after_batch_transfer(next(iter(dm.train_dataloader())), 0)


@pytest.mark.parametrize("model", NEW_MODELS)
@pytest.mark.parametrize("dataset", ["digits", "folder"])
def test_every_autoencoder_learns_on_every_offline_dataset(model, dataset, image_folder,  # noqa: F811
                                                           make_config):
    cfg = make_config(f"model={model}", *dataset_args(dataset, image_folder), *FAST,
                      "logger=csv", "trainer.max_epochs=2", "trainer.log_every_n_steps=1",
                      "trainer.limit_train_batches=6", "trainer.limit_val_batches=1",
                      "test=false", "callbacks.image_grids.save_dir=null",
                      "~callbacks.periodic_checkpoint", "model.optimizer.lr=3e-3",
                      *SMALLER.get(model, []))
    metrics = train(cfg)
    assert metrics and all(math.isfinite(v) for v in metrics.values()), metrics
    rows = read_metrics(Path(cfg.paths.output_dir))
    key = "train/recon_step" if model in ("sparse_ae", "greedy_ae") else "train/loss_step"
    losses = step_values(rows, key)
    assert len(losses) >= 8
    assert np.mean(losses[-3:]) < np.mean(losses[:3]), losses


def test_tied_weights_are_one_tensor_that_learns_from_both_sides(tmp_path):
    tied = build(compose_config(["model=tied_ae"], tmp_path).model)
    untied = build(compose_config(["model=ae"], tmp_path).model)
    encoder_linears = [m for m in tied.encoder.modules() if isinstance(m, nn.Linear)]
    assert all(a is b for a, b in zip(tied.decoder.tied, encoder_linears[::-1], strict=True))
    names = [name for name, _ in tied.named_parameters()]
    assert not any("decoder" in n and "weight" in n for n in names), names
    n_tied, n_untied = (sum(p.numel() for p in m.parameters()) for m in (tied, untied))
    assert n_tied < 0.55 * n_untied
    # The weight gets the gradients of both sides: encoding and decoding add up.
    first = encoder_linears[0].weight
    x = digits_batch(8)[0]
    grads = []
    for side in ("encoder", "decoder", "both"):
        tied.zero_grad()
        codings = tied.encode(x)
        if side == "decoder":
            codings = codings.detach()
        out = tied.decoder(codings)
        target = codings.sum() if side == "encoder" else out.sum()
        target.backward()
        grads.append(first.grad.clone())
    assert grads[0].abs().sum() > 0 and grads[1].abs().sum() > 0
    assert not torch.allclose(grads[2], grads[1]) and not torch.allclose(grads[2], grads[0])


def test_denoising_corrupts_only_in_training(tmp_path, monkeypatch):
    for noise in ("gaussian", "dropout"):
        model = build(compose_config(["model=denoising_ae", f"model.noise={noise}",
                                      "model.noise_level=0.5"], tmp_path).model)
        seen = []

        def encode(x, seen=seen, original=model.encode):
            seen.append(x.clone())
            return original(x)

        monkeypatch.setattr(model, "encode", encode)
        x, y = digits_batch(16)
        model.train()
        model.losses((x, y))
        assert not torch.equal(seen[-1], x)
        if noise == "dropout":
            assert ((seen[-1] == 0) & (x > 0)).float().mean() > 0.2
        model.eval()
        model.losses((x, y))
        assert torch.equal(seen[-1], x)
        assert not torch.equal(model.corrupt(x), x)  # available on demand for the grids


def test_denoising_logs_noisy_restored_clean_triplets(make_config):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cfg = make_config("model=denoising_ae", *FAST, "trainer.max_epochs=1",
                      "trainer.limit_train_batches=2", "trainer.limit_val_batches=1",
                      "test=false")
    train(cfg)
    events = EventAccumulator(str(Path(cfg.paths.output_dir) / "tensorboard"))
    events.Reload()
    assert "denoising" in events.Tags()["images"]
    (image,) = events.Images("denoising")
    # 32 images, 8 per row, 3 rows (noisy, restored, clean) per group: 12 rows of 30 px
    assert image.height == 12 * 28 + 13 * 2


def codings_after_training(weight: float, tmp_path) -> float:
    torch.manual_seed(0)
    model = build(compose_config(["model=sparse_ae", f"model.sparsity_weight={weight}",
                                  "model.codings_dim=50"], tmp_path).model)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    dm = DigitsDataModule(batch_size=128)
    dm.setup()
    for _ in range(2):
        for batch in dm.train_dataloader():
            optimizer.zero_grad()
            model.losses(dm.on_after_batch_transfer(batch, 0))["loss"].backward()
            optimizer.step()
    with torch.no_grad():
        return model.encode(digits_batch(500)[0])  # the sigmoid codings


def test_sparsity_penalty_pulls_the_mean_activation_to_the_target(tmp_path):
    free = codings_after_training(0.0, tmp_path)
    sparse = codings_after_training(0.5, tmp_path)
    assert abs(sparse.mean() - 0.1) < abs(free.mean() - 0.1) / 2, (free.mean(), sparse.mean())
    assert sparse.mean() < 0.2
    # Geron's claim: with the penalty most activations are near zero; without it, few are.
    near_zero = [(c < 0.1).float().mean().item() for c in (free, sparse)]
    assert near_zero[1] > 0.5 > near_zero[0] + 0.2, near_zero


def test_sparse_autoencoder_logs_histograms_and_near_zero_fraction(make_config):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    x, y = digits_batch(32)
    for penalty in ("l1", "kl"):
        # A threshold near the codings' median at init, so the count is neither 0 nor 1.
        model = build(make_config("model=sparse_ae", f"model.penalty={penalty}",
                                  "model.sparsity_weight=0.3", "model.target_activation=0.2",
                                  "model.near_zero_threshold=0.5").model)
        with torch.no_grad():
            terms = model.losses((x, y))
            codings = model.encode(x)
            recon = F.binary_cross_entropy(model.reconstruct(x), x)
        if penalty == "l1":  # Keras' activity L1: sum_j |c_j|, averaged over the batch
            expected = codings.abs().sum(1).mean()
        else:  # sum_j KL(Bernoulli(0.2) || Bernoulli(mean activation of neuron j))
            expected = kl_divergence(Bernoulli(probs=torch.full((300,), 0.2)),
                                     Bernoulli(probs=codings.mean(0))).sum()
        assert terms["sparsity"].item() == pytest.approx(expected.item(), rel=1e-4), penalty
        assert terms["recon"].item() == pytest.approx(recon.item(), rel=1e-4)
        assert terms["loss"].item() == pytest.approx((recon + 0.3 * expected).item(), rel=1e-4)
        near_zero = (codings < 0.5).sum().item() / codings.numel()
        assert 0.05 < near_zero < 0.95
        assert terms["near_zero"].item() == pytest.approx(near_zero)
        assert terms["mean_activation"].item() == pytest.approx(codings.mean().item())

    cfg = make_config("model=sparse_ae", "model.penalty=l1", "model.sparsity_weight=1e-3",
                      *FAST, "trainer.max_epochs=1", "trainer.limit_train_batches=2",
                      "trainer.limit_val_batches=2", "test=false")
    metrics = train(cfg)
    assert 0 <= metrics["val/near_zero"] <= 1 and "val/sparsity" in metrics
    events = EventAccumulator(str(Path(cfg.paths.output_dir) / "tensorboard"))
    events.Reload()
    assert {"codings/activations", "codings/neuron_mean_activations"} <= set(
        events.Tags()["histograms"])


def test_greedy_training_goes_through_its_phases(make_config, caplog):
    cfg = make_config("model=greedy_ae", "model.epochs_per_phase=1", *FAST, "logger=csv",
                      "trainer.max_epochs=3", "trainer.limit_train_batches=3",
                      "trainer.limit_val_batches=1", "test=false")
    model = build(cfg.model)
    encoder_weights = [s[0].weight for s in model.encoder_stages]
    with caplog.at_level(logging.INFO, logger="genmodels.models.greedy"):
        train(cfg)
    messages = [r.getMessage() for r in caplog.records if "Greedy phase" in r.getMessage()]
    assert [m.split(" from")[0] for m in messages] == [
        "Greedy phase 1/3", "Greedy phase 2/3", "Greedy phase 3/3"]
    assert "784 -> 100 -> 784" in messages[0] and "100 -> 30 -> 100" in messages[1]
    phases = step_values(read_metrics(Path(cfg.paths.output_dir)), "train/phase")
    assert phases == [1.0, 2.0, 3.0]
    assert len(encoder_weights) == 2


def test_greedy_phases_train_one_layer_pair_then_all(tmp_path, monkeypatch):
    from genmodels.models import GreedyAutoEncoder

    model = build(compose_config(["model=greedy_ae", "model.epochs_per_phase=1"],
                                 tmp_path).model).train()
    x, y = digits_batch(16)
    for epoch, trained in ((0, (True, False)), (1, (False, True)), (2, (True, True))):
        monkeypatch.setattr(GreedyAutoEncoder, "current_epoch", property(lambda _, e=epoch: e))
        model.zero_grad(set_to_none=True)
        model.losses((x, y))["loss"].backward()
        grads = [stage[0].weight.grad for stage in model.encoder_stages]
        assert [g is not None and g.abs().sum() > 0 for g in grads] == list(trained), epoch


@pytest.mark.parametrize("overrides", [["model=ae"], ["model=vae", "model.latent_dim=2"]])
def test_latent_scatter_logs_a_figure_and_an_embedding(overrides, make_config):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cfg = make_config(*overrides, "callbacks=latent", "callbacks.latent_scatter.every_n_epochs=1",
                      "callbacks.latent_scatter.max_points=100", *FAST, "trainer.max_epochs=1",
                      "trainer.limit_train_batches=2", "test=false")
    train(cfg)
    output_dir = Path(cfg.paths.output_dir)
    events = EventAccumulator(str(output_dir / "tensorboard"))
    events.Reload()
    assert "latent_scatter" in events.Tags()["images"]
    projector = output_dir / "tensorboard" / "projector_config.pbtxt"
    assert projector.exists() and "sprite" in projector.read_text()
    (tensors,) = (output_dir / "tensorboard").glob("*/codings/tensors.tsv")
    rows = tensors.read_text().splitlines()
    assert len(rows) == 100 and len(rows[0].split("\t")) == (30 if "model=ae" in overrides else 2)
    assert (output_dir / "images" / "latent_scatter_epoch0000.png").exists()
    # One row per coding unit (the first 32) of its 10 strongest of the 100 images.
    assert "latent/top_activations" in events.Tags()["images"]
    top = read_image(str(output_dir / "images" / "latent_top_activations_epoch0000.png"))
    units = 30 if "model=ae" in overrides else 2
    assert top.shape[1:] == (units * 30 + 2, 10 * 30 + 2)


def test_latent_scatter_is_opt_in():
    cfg = compose_config([])
    assert "latent_scatter" not in cfg.callbacks


def test_pretraining_experiment_reports_both_accuracies(make_config, caplog):
    cfg = make_config("experiment=pretrain_classifier", *FAST, "trainer.max_epochs=1",
                      "trainer.limit_train_batches=5", "pretrain.num_labelled=100",
                      "pretrain.classifier_epochs=2", "trainer.limit_val_batches=1")
    with caplog.at_level(logging.INFO, logger="genmodels.jobs.pretrain"):
        metrics = pretrain_classifier(cfg)
    for name in ("pretrained", "scratch"):
        assert 0.0 <= metrics[f"{name}/test/acc"] <= 1.0
    assert "autoencoder/val/loss" in metrics
    report = caplog.text
    assert "Test accuracy with 100 labelled training images" in report
    assert "from scratch" in report and "pretrained as an autoencoder (fine-tuned)" in report
    output_dir = Path(cfg.paths.output_dir)
    assert (output_dir / "autoencoder" / "checkpoints" / "last.ckpt").exists()
    assert (output_dir / "classifier_pretrained").is_dir()
    assert (output_dir / "classifier_scratch").is_dir()
    # One HPARAMS row for the run, with both accuracies beside the autoencoder's metrics
    from .test_tensorboard import hparams_table

    (row,) = hparams_table(output_dir / "autoencoder" / "tensorboard").values()
    assert row["hparams"]["pretrain.num_labelled"] == 100
    for name in ("pretrained", "scratch"):
        assert row["metrics"][f"hp/{name}/test/acc"] == pytest.approx(metrics[f"{name}/test/acc"])
    assert "hp/autoencoder/val/loss" in row["metrics"]
    # The run's own summary.json, which a sweep's table reads: status and both accuracies
    from genmodels.jobs.sweeps import read_job

    job = read_job(output_dir)
    assert job["status"] == "ok"
    assert job["metrics"]["pretrained/test/acc"] == pytest.approx(metrics["pretrained/test/acc"])
    assert any(name.startswith("autoencoder/val/loss") for name in job["metrics"])


def test_a_diverged_pretraining_run_says_so_in_its_summary(make_config, monkeypatch):
    from genmodels.errors import TrainingDiverged
    from genmodels.jobs.sweeps import read_job
    from genmodels.models.autoencoder import AutoEncoder

    monkeypatch.setattr(AutoEncoder, "reconstruction_loss",
                        lambda self, x, codings: codings.sum() * float("nan"))
    cfg = make_config("experiment=pretrain_classifier", *FAST, "trainer.max_epochs=1",
                      "trainer.limit_train_batches=4", "trainer.limit_val_batches=1",
                      "callbacks.image_grids=null", "logger=csv")
    with pytest.raises(TrainingDiverged):
        pretrain_classifier(cfg)
    assert read_job(Path(cfg.paths.output_dir))["status"] == "diverged"


def test_pretraining_prints_each_model_summary_without_the_flops_column(make_config, caplog,
                                                                      capsys, monkeypatch):
    """The autoencoder's and both classifiers' layer tables are genmodels' ModelSummary,
    as train.py prints: Lightning's own (or its rich one, printed to stdout) adds a FLOPs
    column of zeros (these models define no example_input_array) and a FLOPs total."""
    cfg = make_config("experiment=pretrain_classifier", "trainer=cpu",
                      "trainer.enable_progress_bar=false", "trainer.enable_model_summary=true",
                      "trainer.max_epochs=1", "trainer.limit_train_batches=1",
                      "trainer.limit_val_batches=1", "test=false", "logger=csv",
                      "callbacks.image_grids=null", "pretrain.num_labelled=16",
                      "pretrain.classifier_epochs=1")
    # Lightning's logger does not pass its lines on to the root logger, where caplog
    # listens, unless train.py's console has taken its own handler away.
    monkeypatch.setattr(logging.getLogger("lightning.pytorch"), "propagate", True)
    with caplog.at_level(logging.INFO):
        pretrain_classifier(cfg)
    output = capsys.readouterr().out + caplog.text
    # One table per model trained, the classifiers' with their head; none counts FLOPs.
    assert output.count("Trainable params") == 3, output
    assert output.count("head") >= 2, output
    assert "flops" not in output.lower(), output


def test_pretraining_classifier_can_freeze_the_encoder(tmp_path):
    cfg = compose_config(["experiment=pretrain_classifier"], tmp_path)
    encoder = build(cfg.model.encoder)
    before = [p.clone() for p in encoder.parameters()]
    classifier = build(cfg.pretrain.classifier)(encoder=encoder, num_classes=10,
                                                freeze_encoder=True)
    optimizer = classifier.configure_optimizers()
    x, y = digits_batch(32)
    classifier.training_step((x, y), 0)  # logs outside a trainer are ignored
    loss = torch.nn.functional.cross_entropy(classifier(x), y)
    loss.backward()
    optimizer.step()
    assert all(torch.equal(a, b) for a, b in zip(before, encoder.parameters(), strict=True))


def test_pretraining_needs_labels(tmp_path):
    from genmodels.jobs.pretrain import keep_labelled_subset

    dm = DigitsDataModule()
    with pytest.raises(GenmodelsError, match="num_labelled=5000"):
        keep_labelled_subset(dm, 5000, seed=0)
    keep_labelled_subset(dm, 50, seed=0)
    assert len(dm.splits["train"][0]) == 50


def test_autoencoder_samples_stay_within_the_codings_range(tmp_path):
    model = build(compose_config(["model=linear_ae"], tmp_path).model).eval()
    model.codings_low.fill_(-100.0)
    model.codings_high.fill_(100.0)
    images = model.sample(16)
    assert images.min() >= 0 and images.max() <= 1  # linear decoder output is clipped


def test_linear_ae_as_configured_is_linear_and_finds_the_pca_subspace(tmp_path):
    """`model=linear_ae`, built from its YAML, on the 8x8 digits: encoder and decoder are
    affine maps, the decoder spans the first k principal components, and the
    reconstruction error equals PCA's with k components (Baldi & Hornik 1989)."""
    k = 5
    cfg = compose_config(["model=linear_ae", "dataset.image_size=8",
                          f"model.codings_dim={k}"], tmp_path)
    torch.manual_seed(0)
    model = build(cfg.model)
    dm = build(cfg.dataset)
    dm.setup()
    images = dm.splits["train"][0].float().div(255)  # (N, 1, 8, 8) in [0, 1]
    flat = images.flatten(1).numpy()
    # Full-batch L-BFGS: the loss is a smooth function with no spurious minima (Baldi &
    # Hornik), so a second-order method reaches the optimum in a few hundred iterations.
    optimizer = torch.optim.LBFGS(model.parameters(), lr=1, max_iter=500,
                                  tolerance_grad=1e-9, tolerance_change=1e-12,
                                  line_search_fn="strong_wolfe")
    batch = (images, torch.zeros(len(images), dtype=torch.long))

    def closure():
        optimizer.zero_grad()
        loss = model.losses(batch)["loss"]
        loss.backward()
        return loss

    optimizer.step(closure)

    with torch.no_grad():
        # Affine: f(a x + (1 - a) y) = a f(x) + (1 - a) f(y), for the encoder and decoder.
        x, y = images[:8], images[8:16]
        mix = model.encode(0.3 * x + 0.7 * y)
        assert torch.allclose(mix, 0.3 * model.encode(x) + 0.7 * model.encode(y), atol=1e-4)
        z = torch.randn(8, k)
        decoded = model.decode(0.3 * z + 0.7 * 2 * z)
        assert torch.allclose(decoded, 0.3 * model.decode(z) + 0.7 * model.decode(2 * z),
                              atol=1e-4)
        # The decoder's directions: decode(e_i) - decode(0).
        origin = model.decode(torch.zeros(1, k)).flatten(1)
        directions = (model.decode(torch.eye(k)).flatten(1) - origin).numpy().T  # (64, k)
        reconstructions = model.reconstruct(images).flatten(1).numpy()
    pca = PCA(n_components=k).fit(flat)
    angles = np.degrees(subspace_angles(directions, pca.components_.T))
    assert angles.max() < 3.0, angles
    pca_error = np.mean((pca.inverse_transform(pca.transform(flat)) - flat) ** 2)
    ae_error = np.mean((reconstructions - flat) ** 2)
    assert ae_error == pytest.approx(pca_error, rel=0.02), (ae_error, pca_error)


def test_pretrained_encoder_is_reused_and_beats_training_from_scratch(tmp_path, monkeypatch):
    """Geron's claim (Hands-On ML ch. 17): with few labels, a classifier on an encoder
    pretrained as an autoencoder on all images beats the same classifier from scratch.
    Averaged over seeds (each a different labelled subset and initialisation)."""
    import genmodels.jobs.pretrain as pretraining

    encoders = {}
    fit = pretraining.fit_classifier

    def recording_fit(cfg, name, encoder, *args, **kwargs):
        encoders[name] = {k: v.clone() for k, v in encoder.state_dict().items()}
        return fit(cfg, name, encoder, *args, **kwargs)

    monkeypatch.setattr(pretraining, "fit_classifier", recording_fit)
    accuracies = {"pretrained": [], "scratch": []}
    for seed in (0, 1, 2):
        cfg = compose_config(["experiment=pretrain_classifier", *FAST, "logger=csv",
                              "dataset.image_size=8", "trainer.max_epochs=20",
                              "callbacks.image_grids.save_dir=null",
                              "~callbacks.periodic_checkpoint", "test=false",
                              "pretrain.num_labelled=50", "pretrain.freeze_encoder=true",
                              "pretrain.classifier_epochs=300",
                              "pretrain.classifier.optimizer.lr=0.01",
                              f"seed={seed}"], tmp_path / f"seed{seed}")
        metrics = pretrain_classifier(cfg)
        for name in accuracies:
            accuracies[name].append(metrics[f"{name}/test/acc"])
        # The classifier started from the autoencoder's trained encoder, not a fresh one.
        trained = torch.load(Path(cfg.paths.output_dir) / "autoencoder" / "checkpoints"
                             / "last.ckpt", map_location="cpu", weights_only=False)
        trained = {k.removeprefix("encoder."): v for k, v in trained["state_dict"].items()
                   if k.startswith("encoder.")}
        assert trained.keys() == encoders["pretrained"].keys()
        assert all(torch.equal(trained[k], encoders["pretrained"][k]) for k in trained)
        assert not all(torch.equal(trained[k], encoders["scratch"][k]) for k in trained)
    # Measured: frozen pretrained 0.85 / 0.81 vs scratch 0.81 / 0.79 (seeds 0, 1).
    assert np.mean(accuracies["pretrained"]) > np.mean(accuracies["scratch"]) + 0.01, \
        accuracies


def test_autoencoder_samples_inside_the_range_of_its_codings(tmp_path):
    model = build(compose_config(["model=ae"], tmp_path).model)
    codings = model.encode(torch.rand(64, 1, 28, 28)).detach()
    model._track_codings_range(codings)
    model.on_train_epoch_end()
    assert torch.equal(model.codings_low, codings.amin(0))
    assert torch.equal(model.codings_high, codings.amax(0))
