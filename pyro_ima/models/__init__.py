"""The Pyro side: generative models, guides and the networks they use."""

from .guides import (
                     GUIDES,
                     AmortizedGaussianGuide,
                     DiagonalGuide,
                     FullCovGuide,
                     IsotropicGuide,
                     support_bijection,
)
from .networks import (
                     MLP,
                     BatchedLinear,
                     ConvDecoder,
                     ConvEncoder,
                     SmoothLeakyReLU,
                     smooth_leaky_relu,
)
from .subset import ReplicaSubset
from .vae import VAE, BernoulliVAE, GaussianVAE, data_plates

__all__ = ["VAE", "GaussianVAE", "BernoulliVAE", "data_plates",
           "AmortizedGaussianGuide", "DiagonalGuide",
           "IsotropicGuide", "FullCovGuide", "GUIDES", "support_bijection", "MLP",
           "BatchedLinear", "SmoothLeakyReLU", "smooth_leaky_relu", "ConvEncoder", "ConvDecoder",
           "ReplicaSubset"]
