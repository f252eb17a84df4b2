"""The VAE family: every config learns, the loss terms are honest nats, the IWAE bound
behaves as theory says, binarization, and the latent-space tools and callbacks."""

import math
from pathlib import Path

import lightning as L
import pytest
import torch
from torch.distributions import Bernoulli, Normal, kl_divergence

from genmodels import latent
from genmodels.config import build
from genmodels.data import DigitsDataModule
from genmodels.engine import essential_callbacks
from genmodels.errors import GenmodelsError
from genmodels.jobs.likelihood import main
from genmodels.jobs.train import train
from genmodels.metrics.likelihood import (
    importance_sampled_nll,
    importance_sampled_nll_per_image,
    negative_elbo,
)
from genmodels.nn.losses import (
    bernoulli_nll,
    gaussian_nll,
    kl_to_standard_normal,
)

from .conftest import FAST, compose_config

VAES = ["vae", "vae_mnist_500", "conv_vae", "conv_vae_bn", "beta_vae", "faces_vae"]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """On a CPU shared with other jobs, torch's worker threads spin-wait for each other:
    one thread ran these small convolutions up to 40x faster on the 2-core test machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def build_model(tmp_path, *overrides):
    return build(compose_config(list(overrides), tmp_path).model)


@pytest.fixture(scope="module")
def digits() -> torch.Tensor:
    """64 real handwritten digits, 28x28 in [0, 1], dynamically binarized."""
    datamodule = DigitsDataModule(binarize="dynamic")
    datamodule.setup()
    return datamodule.scale(datamodule.splits["val"][0][:64])


@pytest.mark.parametrize("name", VAES)
def test_every_vae_learns_a_batch_of_digits(name, digits, tmp_path):
    # Convolutional ones at 16x16 (faces_vae in RGB) to keep the test fast.
    shape = [] if name.startswith("vae") else ["dataset.image_size=16"]
    if name == "faces_vae":
        shape.append("dataset.channels=3")
    torch.manual_seed(0)
    model = build_model(tmp_path, f"model={name}", *shape)
    x = digits[:16].expand(-1, model.image_shape[0], -1, -1)
    x = torch.nn.functional.interpolate(x, size=model.image_shape[1:])
    optimizer = model.configure_optimizers()
    if name == "beta_vae":  # its default lr (1e-4) needs more than a few steps
        optimizer.param_groups[0]["lr"] = 1e-3
    losses = []
    for _ in range(10):
        terms = model.losses((x, None))
        optimizer.zero_grad()
        terms["loss"].backward()
        optimizer.step()
        losses.append(terms["loss"].item())
        assert torch.allclose(terms["elbo"], -(terms["recon"] + terms["kl"]))
    assert sum(losses[-3:]) < sum(losses[:3]), losses


def test_kl_term_matches_the_closed_form():
    mean = torch.tensor([[1.0, 0.0], [0.5, -2.0]])
    logvar = torch.tensor([[0.0, math.log(2.0)], [-1.0, 0.5]])
    # Per dimension: (sigma^2 + mu^2 - 1 - log sigma^2) / 2.
    assert kl_to_standard_normal(mean, logvar)[0].item() == pytest.approx(
        0.5 * 1.0 + 0.5 * (2.0 - 1.0 - math.log(2.0)))
    reference = torch.distributions.kl_divergence(
        torch.distributions.Normal(mean, (0.5 * logvar).exp()),
        torch.distributions.Normal(0.0, 1.0)).sum(1)
    assert torch.allclose(kl_to_standard_normal(mean, logvar), reference)


def terms_and_nats_by_hand(model, x, seed=0):
    """model.losses on x, and its recon and KL in nats per image computed apart with
    torch.distributions, from the same posterior and the same reparameterization noise."""
    torch.manual_seed(seed)
    terms = model.losses((x, None))
    torch.manual_seed(seed)
    with torch.no_grad():
        mean, logvar = model.posterior(x)
        std = (0.5 * logvar).exp()
        z = mean + std * torch.randn_like(mean)
        recon = -Bernoulli(logits=model.decoder(z)).log_prob(x).flatten(1).sum(1).mean()
        kl = kl_divergence(Normal(mean, std), Normal(0.0, 1.0)).sum(1).mean()
    return terms, recon, kl


def far_from_the_prior(model):
    """The posterior's means moved to 20: a KL of hundreds of nats (at init it is ~0.01,
    which a loss of hundreds would hide)."""
    with torch.no_grad():
        model.to_posterior.bias[: model.latent_dim] += 20.0
    return model


def test_loss_weights_change_the_loss_but_never_the_logged_nats(digits, tmp_path):
    model = far_from_the_prior(build_model(tmp_path, "model=conv_vae"))  # 500 x mean recon + KL
    terms, recon, kl = terms_and_nats_by_hand(model, digits[:8])
    assert kl > 300  # 2 latent dimensions, each about 20^2 / 2
    assert terms["kl"].item() == pytest.approx(kl.item(), rel=1e-5)
    assert terms["recon"].item() == pytest.approx(recon.item(), rel=1e-5)
    assert terms["elbo"].item() == pytest.approx(-(recon + kl).item(), rel=1e-5)
    assert terms["loss"].item() == pytest.approx((500 * recon / 784 + kl).item(), rel=1e-5)
    assert 0.5 * 784 * math.log(2) < terms["recon"] < 2 * 784 * math.log(2)  # nats per image
    model = far_from_the_prior(build_model(tmp_path, "model=beta_vae", "model.kl_weight=1000",
                                           "model.kl_capacity=25",
                                           "model.kl_capacity_steps=100"))
    terms, recon, kl = terms_and_nats_by_hand(model, digits[:8])  # step 0: capacity C = 0
    assert terms["kl"].item() == pytest.approx(kl.item(), rel=1e-5)
    assert terms["loss"].item() == pytest.approx((recon + 1000 * kl).item(), rel=1e-5)
    assert terms["capacity"] == 0


def test_epsilon_std_is_part_of_the_posterior(digits, tmp_path):
    plain = build_model(tmp_path, "model=conv_vae_bn").eval()
    scaled = build_model(tmp_path, "model=conv_vae_bn", "model.epsilon_std=0.5").eval()
    scaled.load_state_dict(plain.state_dict())
    (mean_a, logvar_a), (mean_b, logvar_b) = plain.posterior(digits), scaled.posterior(digits)
    assert torch.allclose(mean_a, mean_b)
    assert torch.allclose(logvar_b, logvar_a + 2 * math.log(0.5), atol=1e-5)


def test_gaussian_likelihood_with_a_learned_std(tmp_path):
    model = build_model(tmp_path, "model=faces_vae", "model.learn_gaussian_std=true",
                        "model.value_range=[-1.0,1.0]", "dataset.image_size=16",
                        "dataset.channels=3", "model.gaussian_std=0.3").eval()
    torch.manual_seed(0)
    x = torch.rand(4, 3, 16, 16) * 2 - 1
    # -log N(x; mean, std^2) summed over the pixel values, with the learned std.
    with torch.no_grad():
        out = model.decoder(torch.randn(4, 200))
        expected = -Normal(model.output_mean(out), 0.3).log_prob(x).flatten(1).sum(1)
        nll = model.reconstruction_nll(out, x)
        assert torch.allclose(nll, expected, rtol=1e-5), (nll, expected)
    terms = model.losses((x, None))
    terms["loss"].backward()
    assert model.log_gaussian_std.grad is not None
    assert terms["gaussian_std"].item() == pytest.approx(0.3)
    # The maximum-likelihood std is the residuals' root mean square: trained alone, from
    # below or above, the std goes there.
    torch.manual_seed(1)
    with torch.no_grad():
        squares = []
        for _ in range(50):  # over the reparameterization noise, as the loss sees it
            mean, logvar = model.posterior(x)
            z = mean + (0.5 * logvar).exp() * torch.randn_like(mean)
            squares.append((model.decode(z) - x).square().mean())
        residual_rms = torch.stack(squares).mean().sqrt().item()
    model.requires_grad_(False)
    for start in (0.05, 3.0):
        with torch.no_grad():
            model.log_gaussian_std.fill_(math.log(start))
        model.log_gaussian_std.requires_grad_(True)
        # (beta2 0.9: the first, huge gradients are soon forgotten)
        optimizer = torch.optim.Adam([model.log_gaussian_std], lr=0.05, betas=(0.5, 0.9))
        for _ in range(150):
            optimizer.zero_grad()
            model.losses((x, None))["loss"].backward()
            optimizer.step()
        learned = model.log_gaussian_std.exp().item()
        assert learned == pytest.approx(residual_rms, rel=0.02), (start, learned, residual_rms)
    samples = model.eval().sample(4)
    assert samples.min() >= -1 and samples.max() <= 1


def test_iwae_bound_equals_the_elbo_at_k1_and_tightens_with_k(digits, tmp_path):
    torch.manual_seed(0)
    model = build_model(tmp_path, "model=vae").eval()
    x = digits.repeat(8, 1, 1, 1)  # 512 draws: Monte Carlo error well under a nat
    elbo = negative_elbo(model, x)
    assert importance_sampled_nll(model, x, k=1) == pytest.approx(elbo, abs=1.5)
    nll_10, nll_100 = (importance_sampled_nll(model, digits, k=k) for k in (10, 100))
    assert nll_100 < nll_10 < elbo - 2


def test_iwae_bound_is_exact_when_the_posterior_is_the_prior(digits, tmp_path):
    """q(z|x) = N(0, I) = p(z) and a decoder that ignores z: every importance weight is
    p(x), so the bound equals -log p(x) for any k, however the samples are chunked."""
    model = build_model(tmp_path, "model=vae").eval()
    for layer in (model.to_posterior, model.decoder.net[0][-2]):
        torch.nn.init.zeros_(layer.weight)
        torch.nn.init.zeros_(layer.bias)
    exact = model.reconstruction_nll(model.decoder(torch.zeros(16, 10)), digits[:16])
    for k, batch_size in ((1, 100), (100, 30), (100, 10000), (7, 3)):
        estimate = importance_sampled_nll_per_image(model, digits[:16], k, batch_size)
        assert torch.allclose(estimate, exact, atol=1e-3), (k, batch_size)


def test_binarization_is_dynamic_for_training_and_fixed_for_evaluation():
    datamodule = DigitsDataModule(binarize="dynamic")
    datamodule.setup()
    train_images = datamodule.splits["train"][0][:64]
    first, second = (datamodule.scale(train_images, dynamic_binarization=True) for _ in range(2))
    assert set(first.unique().tolist()) == {0.0, 1.0} and not torch.equal(first, second)
    again = DigitsDataModule(binarize="dynamic")
    again.setup()
    assert set(datamodule.splits["val"][0].unique().tolist()) == {0, 255}
    assert torch.equal(datamodule.splits["val"][0], again.splits["val"][0])
    with pytest.raises(GenmodelsError, match="dataset.binarize"):
        DigitsDataModule(binarize="sometimes")


def test_latent_tools_return_images_of_the_right_shape(digits, tmp_path):
    model = build_model(tmp_path, "model=conv_vae").eval()
    generator = torch.Generator().manual_seed(0)
    assert latent.prior_samples(model, 6, generator, temperature=0.5).shape == (6, 1, 28, 28)
    assert latent.manifold(model, n=5).shape == (25, 1, 28, 28)
    assert latent.manifold(model, n=4, quantiles=True).shape == (16, 1, 28, 28)
    quantiles = latent.grid_values(4, 3.0, quantiles=True)
    assert torch.allclose(quantiles, -quantiles.flip(0)) and quantiles[-1] < 1.2
    assert latent.semantic_interpolation(model, 5, 7, (3, 3), generator).shape == (35, 1, 28, 28)
    for method in ("lerp", "slerp"):
        path = latent.interpolate(model, digits[0], digits[1], steps=7, method=method)
        assert path.shape == (7, 1, 28, 28)
        assert torch.allclose(path[[0, -1]], model.reconstruct(digits[:2]), atol=1e-5)
    # Two batches: a path per pair, one after the other
    paths = latent.interpolate(model, digits[0:2], digits[2:4], steps=5)
    assert torch.allclose(paths[5:], latent.interpolate(model, digits[1], digits[3], steps=5),
                          atol=1e-6)
    with pytest.raises(GenmodelsError, match=r"two images \(C, H, W\) or two batches"):
        latent.interpolate(model, digits[0:2], digits[2])
    has_attribute = torch.arange(len(digits)) % 3 == 0
    vector = latent.attribute_vector(model, digits, has_attribute)
    codings = model.encode(digits)
    assert torch.allclose(vector, codings[has_attribute].mean(0) - codings[~has_attribute].mean(0),
                          atol=1e-5)
    shifted = latent.shift_along(model, digits[:3], vector, multiples=(-1, 0, 1, 2))
    assert shifted.shape == (12, 1, 28, 28)
    assert torch.allclose(shifted[1::4], model.reconstruct(digits[:3]), atol=1e-5)
    with pytest.raises(GenmodelsError, match="2-d latent space"):
        latent.manifold(build_model(tmp_path, "model=vae"))


def test_latent_tools_work_for_an_autoencoder_through_encode_and_decode(digits, tmp_path):
    model = build_model(tmp_path, "model=ae").eval()
    assert latent.latent_dim(model) == 30
    vector = latent.attribute_vector(model, digits, torch.arange(64) < 10)
    assert latent.shift_along(model, digits[:2], vector).shape == (10, 1, 28, 28)
    with pytest.raises(GenmodelsError, match="no encode"):
        latent.interpolate(build_model(tmp_path, "model=dcgan"), digits[0], digits[1])


def test_vae_callbacks_log_figures_and_the_likelihood_command_reads_the_run(make_config,
                                                                            capsys):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cfg = make_config("model=vae", "model.latent_dim=2", "callbacks=vae",
                      "dataset.binarize=dynamic", *FAST, "trainer.max_epochs=1",
                      "trainer.limit_train_batches=3", "trainer.limit_val_batches=2", "test=false",
                      "callbacks.aggregate_posterior.every_n_epochs=1",
                      "callbacks.latent_grids.every_n_epochs=1", "callbacks.latent_grids.steps=4",
                      "callbacks.latent_grids.manifold_size=4")
    metrics = train(cfg)
    assert {"val/loss", "val/elbo", "val/recon", "val/kl", "train/loss_epoch"} <= set(metrics)
    output_dir = Path(cfg.paths.output_dir)
    events = EventAccumulator(str(output_dir / "tensorboard"), size_guidance={"images": 0})
    events.Reload()
    assert {"latent/aggregate_posterior", "latent/manifold", "latent/manifold_quantiles",
            "latent/interpolations", "latent/semantic"} <= set(events.Tags()["images"])
    assert "latent/aggregate_variance" in events.Tags()["scalars"]
    assert (output_dir / "images" / "aggregate_posterior_epoch0000.png").exists()
    main([str(output_dir), "--k", "3", "--limit", "10", "--device", "cpu"])
    assert "10 images" in capsys.readouterr().out


@pytest.mark.parametrize("experiment", ["conv_vae_mnist_2d", "conv_vae_fashion_2d",
                                        "vae_mnist_binarized", "faces_vae_celeba",
                                        "beta_vae_celeba"])
def test_vae_experiment_presets_compose_and_build(experiment, tmp_path):
    cfg = compose_config([f"experiment={experiment}"], tmp_path)
    model = build(cfg.model)
    assert model.image_shape == (cfg.dataset.channels, cfg.dataset.image_size,
                                 cfg.dataset.image_size)
    assert all(build(node) for node in cfg.callbacks.values())


class RecordTraining(L.Callback):
    """Keeps what the model trains on: each training batch and the logged loss terms."""

    def __init__(self):
        self.batches, self.capacities, self.steps = [], [], []

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        self.batches.append(batch[0].detach().clone())
        self.steps.append(trainer.global_step)
        self.capacities.append(module.capacity() if module.kl_capacity is not None else None)


def fit_dense_vae(tmp_path, *overrides, epochs=2):
    """A few epochs of the dense VAE on 8x8 digits, the whole training split per batch."""
    cfg = compose_config(["model=vae", "dataset.image_size=8", *overrides], tmp_path)
    datamodule = build(cfg.dataset)
    datamodule.setup()
    datamodule.batch_size = len(datamodule.splits["train"][0])
    model, record = build(cfg.model), RecordTraining()
    trainer = L.Trainer(accelerator="cpu", max_epochs=epochs, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False,
                        callbacks=[*essential_callbacks(), record],
                        limit_val_batches=0)
    trainer.fit(model, datamodule=datamodule)
    return model, datamodule, record


@pytest.mark.parametrize("binarize", [None, "static", "dynamic"])
def test_binarization_reaches_the_batches_the_model_trains_on(binarize, tmp_path):
    """With one batch per epoch, each epoch trains on the whole (shuffled) training split:
    static binarization gives the same ones every epoch, dynamic a fresh draw each time."""
    _, datamodule, record = fit_dense_vae(tmp_path, f"dataset.binarize={binarize or 'null'}",
                                          epochs=3)
    assert len(record.batches) == 3
    binary = [set(b.unique().tolist()) <= {0.0, 1.0} for b in record.batches]
    ones = [round(b.double().sum().item(), 3) for b in record.batches]
    if binarize is None:
        assert not any(binary)  # grey levels
        assert len(set(ones)) == 1
    elif binarize == "static":
        assert all(binary) and len(set(ones)) == 1
        stored = datamodule.splits["train"][0]
        assert ones[0] == stored.double().div(255).sum().item()
    else:
        assert all(binary) and len(set(ones)) == 3
        # each draw keeps the grey level's mean: pixel on with probability grey/255
        grey_mean = datamodule.splits["train"][0].float().div(255).mean().item()
        assert all(abs(b.mean().item() - grey_mean) < 0.01 for b in record.batches)


def test_beta_vae_capacity_grows_to_its_target_and_then_stays(tmp_path):
    """Burgess et al. (2018), eq. 8: C = kl_capacity * min(1, step / kl_capacity_steps), and
    the KL term kl_weight * |KL - C| in the loss."""
    model, _, record = fit_dense_vae(tmp_path, "+model.kl_capacity=25",
                                     "+model.kl_capacity_steps=4", "model.kl_weight=4",
                                     epochs=7)
    assert record.steps == list(range(7))
    assert record.capacities == pytest.approx([0, 6.25, 12.5, 18.75, 25, 25, 25])
    batch = (record.batches[-1], None)
    torch.manual_seed(0)
    losses = model.losses(batch)
    assert losses["capacity"].item() == pytest.approx(25)
    expected = losses["recon"] + 4 * (losses["kl"] - 25).abs()
    assert losses["loss"].item() == pytest.approx(expected.item(), rel=1e-5)


def test_kl_matches_torch_distributions():
    mean, logvar = torch.randn(6, 4), torch.randn(6, 4)
    expected = kl_divergence(Normal(mean, (0.5 * logvar).exp()), Normal(0.0, 1.0)).sum(1)
    assert torch.allclose(kl_to_standard_normal(mean, logvar), expected, atol=1e-5)
    assert torch.all(kl_to_standard_normal(torch.zeros(2, 3), torch.zeros(2, 3)) == 0)


def test_likelihoods_match_torch_distributions():
    x = torch.rand(3, 1, 4, 4)
    logits = torch.randn(3, 1, 4, 4)
    binary = (x > 0.5).float()
    expected = -torch.distributions.Bernoulli(logits=logits).log_prob(binary).flatten(1).sum(1)
    assert torch.allclose(bernoulli_nll(logits, binary), expected, atol=1e-5)
    expected = -Normal(logits, 0.3).log_prob(x).flatten(1).sum(1)
    assert torch.allclose(gaussian_nll(logits, x, 0.3), expected, atol=1e-4)


def test_vae_losses_are_nats_per_image_and_elbo_ignores_the_kl_weight(tmp_path):
    model = build(compose_config(["model=vae", "model.kl_weight=0.25"], tmp_path).model)
    x = torch.rand(8, 1, 28, 28)
    torch.manual_seed(0)
    losses = model.losses((x, None))
    assert torch.allclose(losses["loss"], losses["recon"] + 0.25 * losses["kl"])
    assert torch.allclose(losses["elbo"], -(losses["recon"] + losses["kl"]))
    # An untrained Bernoulli decoder costs about log(2) nats per pixel.
    assert 0.5 * 784 * math.log(2) < losses["recon"] < 2 * 784 * math.log(2)
    mean, logvar = model.posterior(x)
    assert mean.shape == logvar.shape == (8, 10)


def test_vae_refuses_bernoulli_on_minus_one_to_one_images(tmp_path):
    cfg = compose_config(["model=vae", "model.value_range=[-1.0,1.0]"], tmp_path)
    with pytest.raises(GenmodelsError, match="bernoulli needs value_range"):
        build(cfg.model)
