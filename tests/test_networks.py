"""Networks sized from the image: DCGAN and dense shapes, and the sizes they refuse."""

import pytest
import torch

from genmodels.config import build
from genmodels.errors import GenmodelsError
from genmodels.nn import DCGANDiscriminator, DCGANGenerator, DenseDecoder, DenseEncoder

from .conftest import compose_config


@pytest.mark.parametrize("size", [28, 32, 64])
def test_dcgan_networks_derive_their_shapes_from_the_image_size(size):
    generator = DCGANGenerator(latent_dim=8, channels=3, image_size=size)
    images = generator(torch.randn(4, 8))
    assert images.shape == (4, 3, size, size)
    assert DCGANDiscriminator(channels=3, image_size=size)(images).shape == (4,)


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
