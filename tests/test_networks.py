"""Networks sized from the image: DCGAN and dense shapes, and the sizes they refuse."""

import pytest
import torch

from genmodels.config import build
from genmodels.errors import GenmodelsError
from genmodels.nn import DCGANDiscriminator, DCGANGenerator, DenseDecoder, DenseEncoder
from genmodels.nn.layers import output_activation

from .conftest import compose_config


@pytest.mark.parametrize("size", [28, 32, 64])
def test_dcgan_networks_derive_their_shapes_from_the_image_size(size):
    generator = DCGANGenerator(latent_dim=8, channels=3, image_size=size)
    images = generator(torch.randn(4, 8))
    assert images.shape == (4, 3, size, size)
    assert DCGANDiscriminator(channels=3, image_size=size)(images).shape == (4,)



def layer_kinds(network: torch.nn.Module) -> list[str]:
    """The layers of the DCGANGenerator in `network` (a conditional one wraps it)."""
    generator = next(m for m in network.modules() if isinstance(m, DCGANGenerator))
    return [type(layer).__name__ for layer in generator.net]


def test_dcgan_generators_order_batch_norm_as_their_source_does(tmp_path):
    # The DCGAN paper (Radford et al., 2016): project -> BN -> ReLU, conv -> BN -> ReLU.
    paper = build(compose_config(["model=dcgan64", "dataset.image_size=32"], tmp_path).model)
    assert layer_kinds(paper.generator) == [
        "Linear", "Unflatten", "BatchNorm2d", "ReLU",
        *["ConvTranspose2d", "BatchNorm2d", "ReLU"] * 3, "ConvTranspose2d", "Tanh"]
    # So every transposed conv reads rectified, batch-normalized features: >= 0, and in
    # training mode each channel's pre-activation has batch mean 0 (half of it is cut).
    inputs = []
    for conv in (m for m in paper.generator.modules() if isinstance(m, torch.nn.ConvTranspose2d)):
        conv.register_forward_hook(lambda module, args, out: inputs.append(args[0]))
    paper.generator.train()(torch.randn(16, 100))
    assert len(inputs) == 4 and all((x >= 0).all() and (x == 0).any() for x in inputs)
    # Geron's Keras DCGAN: Dense -> BN (no activation), conv -> SELU -> BN (SELU is an ELU
    # with SELU's alpha and scale here).
    book = build(compose_config(["model=dcgan"], tmp_path).model)
    assert layer_kinds(book.generator) == [
        "Linear", "Unflatten", "BatchNorm2d", "ConvTranspose2d", "ELU", "BatchNorm2d",
        "ConvTranspose2d", "Tanh"]
    for name in ("cgan", "wgan_gp"):  # DCGAN-shaped networks take the paper's order
        generator = build(compose_config([f"model={name}"], tmp_path).model).generator
        assert layer_kinds(generator)[2:4] == ["BatchNorm2d", "ReLU"]
    with pytest.raises(GenmodelsError, match="Unknown batch_norm_order 'bn_first'; valid "
                                             "choices: before_activation, after_activation"):
        DCGANGenerator(8, 1, 28, batch_norm_order="bn_first")

def test_unsupported_sizes_name_the_valid_ones():
    with pytest.raises(GenmodelsError, match="divisible by 4, got 30; valid sizes include 16"):
        DCGANGenerator(latent_dim=8, channels=1, image_size=30)
    with pytest.raises(GenmodelsError, match="channels must be 1 or 3"):
        DenseEncoder(channels=2, image_size=8, hidden_sizes=[4])
    with pytest.raises(GenmodelsError, match="Unknown activation 'swishy'"):
        DenseEncoder(channels=1, image_size=8, hidden_sizes=[4], activation="swishy")


def test_dense_autoencoder_has_the_classic_layer_sizes(tmp_path):
    model = build(compose_config(["model=ae"], tmp_path).model)
    sizes = [m.out_features for m in model.modules() if isinstance(m, torch.nn.Linear)]
    assert sizes == [100, 30, 100, 784]
    x = torch.rand(5, 1, 28, 28)
    assert model.encode(x).shape == (5, 30)
    reconstruction = model.reconstruct(x)
    assert reconstruction.shape == x.shape
    assert 0 <= reconstruction.min() <= reconstruction.max() <= 1


def test_dense_decoder_outputs_images():
    assert DenseDecoder(latent_dim=3, channels=3, image_size=5,
                        hidden_sizes=[7])(torch.randn(2, 3)).shape == (2, 3, 5, 5)


GAN_CONFIGS = ["gan", "gan_upsample", "dcgan", "dcgan64", "cgan", "wgan_gp", "progan",
               "stylegan"]


@pytest.mark.parametrize("name", GAN_CONFIGS)
def test_the_output_activation_found_is_the_last_one_each_generator_runs(name, tmp_path):
    overrides = [f"model={name}"] + (["dataset.image_size=32"] if name == "dcgan64" else [])
    gan = build(compose_config(overrides, tmp_path).model)
    found = output_activation(gan.generator)
    ran = []
    for layer in gan.generator.modules():
        if isinstance(layer, type(found)):
            layer.register_forward_hook(lambda module, args, out: ran.append(module))
    gan.generate(2)
    assert ran[-1] is found
    # and it makes the model's value range: tanh for [-1, 1], sigmoid for [0, 1]
    assert type(found) is {(-1.0, 1.0): torch.nn.Tanh, (0.0, 1.0): torch.nn.Sigmoid}[
        gan.value_range]


@pytest.mark.parametrize(("overrides", "message"), [
    (["model=dcgan", "model.value_range=[0,1]"],
     r"generator's output activation Tanh makes values in \[-1, 1\], but model.value_range "
     r"is \[0.0, 1.0\].*set model.generator.output_activation=sigmoid, or set "
     r"model.value_range=\[-1.0, 1.0\]"),
    (["model=gan", "model.value_range=[-1,1]"],
     r"Sigmoid makes values in \[0, 1\].*set model.generator.output_activation=tanh"),
    (["model=cgan", "model.value_range=[0,1]"],
     r"set model.generator.network.output_activation=sigmoid"),
    (["model=conv_ae", "model.loss=mse", "model.value_range=[-1,1]"],
     r"decoder's output activation Sigmoid.*set model.output_activation=tanh"),
    (["model=conv_ae", "model.loss=mse", "model.value_range=[-1,1]",
      "model.output_activation=relu"],
     r"ReLU makes values in \[0, inf\].*set model.output_activation=tanh\.$"),
])
def test_an_output_activation_that_misses_the_images_range_is_refused(overrides, message,
                                                                       tmp_path):
    with pytest.raises(GenmodelsError, match=message):
        build(compose_config(overrides, tmp_path).model)
