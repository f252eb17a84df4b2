"""Building blocks: layers, encoders/decoders, generators/discriminators, losses."""

from genmodels.nn.conv import (
    ConvDecoder,
    ConvEncoder,
    DCGANDiscriminator,
    DCGANGenerator,
    UpsampleGenerator,
)
from genmodels.nn.dense import DenseDecoder, DenseEncoder, TiedDenseDecoder
from genmodels.nn.gan_layers import (
    ConditionalDiscriminator,
    ConditionalGenerator,
    DenseDiscriminator,
    MinibatchDiscrimination,
    MinibatchStdDev,
)
from genmodels.nn.layers import Dropout, make_activation
from genmodels.nn.progan import GrowthSchedule, ProGANDiscriminator, ProGANGenerator
from genmodels.nn.recurrent import RowLSTMDecoder, RowLSTMEncoder
from genmodels.nn.stylegan import StyleGANGenerator
from genmodels.nn.unet import UNet

__all__ = ["ConditionalDiscriminator", "ConditionalGenerator", "ConvDecoder", "ConvEncoder",
           "DCGANDiscriminator", "DCGANGenerator", "DenseDecoder", "DenseDiscriminator",
           "DenseEncoder", "Dropout", "GrowthSchedule", "MinibatchDiscrimination",
           "MinibatchStdDev", "ProGANDiscriminator", "ProGANGenerator", "RowLSTMDecoder",
           "RowLSTMEncoder", "StyleGANGenerator", "TiedDenseDecoder", "UNet",
           "UpsampleGenerator", "make_activation"]
