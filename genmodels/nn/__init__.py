"""Building blocks: layers, encoders/decoders, generators/discriminators, losses."""

from genmodels.nn.conv import ConvDecoder, ConvEncoder, DCGANDiscriminator, DCGANGenerator
from genmodels.nn.dense import DenseDecoder, DenseEncoder, TiedDenseDecoder
from genmodels.nn.layers import Dropout, make_activation
from genmodels.nn.recurrent import RowLSTMDecoder, RowLSTMEncoder

__all__ = ["ConvDecoder", "ConvEncoder", "DCGANDiscriminator", "DCGANGenerator",
           "DenseDecoder", "DenseEncoder", "Dropout", "RowLSTMDecoder", "RowLSTMEncoder",
           "TiedDenseDecoder", "make_activation"]
