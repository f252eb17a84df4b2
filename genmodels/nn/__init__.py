"""Building blocks: layers, encoders/decoders, generators/discriminators, losses."""

from genmodels.nn.conv import ConvDecoder, ConvEncoder, DCGANDiscriminator, DCGANGenerator
from genmodels.nn.dense import DenseDecoder, DenseEncoder
from genmodels.nn.layers import Dropout, make_activation

__all__ = ["ConvDecoder", "ConvEncoder", "DCGANDiscriminator", "DCGANGenerator", "DenseDecoder",
           "DenseEncoder", "Dropout", "make_activation"]
