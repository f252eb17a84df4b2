"""Building blocks: layers, encoders/decoders, generators/discriminators, losses."""

from genmodels.nn.conv import DCGANDiscriminator, DCGANGenerator, UpsampleGenerator
from genmodels.nn.dense import DenseDecoder, DenseEncoder
from genmodels.nn.gan_layers import (
                                     ConditionalDiscriminator,
                                     ConditionalGenerator,
                                     DenseDiscriminator,
                                     MinibatchDiscrimination,
                                     MinibatchStdDev,
)
from genmodels.nn.layers import Dropout, make_activation
from genmodels.nn.progan import GrowthSchedule, ProGANDiscriminator, ProGANGenerator
from genmodels.nn.stylegan import StyleGANGenerator

__all__ = ["ConditionalDiscriminator", "ConditionalGenerator", "DCGANDiscriminator",
           "DCGANGenerator", "DenseDecoder", "DenseDiscriminator", "DenseEncoder", "Dropout",
           "GrowthSchedule", "MinibatchDiscrimination", "MinibatchStdDev", "ProGANDiscriminator",
           "ProGANGenerator", "StyleGANGenerator", "UpsampleGenerator", "make_activation"]
