"""pyro-ima: what the ELBO does to a VAE's representation, measured with Pyro."""

__version__ = "0.2.0"

from . import data, fileio, inference, linear_gaussian, metrics, mixings, models, priors, sprites

__all__ = ["data", "fileio", "inference", "linear_gaussian", "metrics", "mixings", "sprites",
           "models", "priors", "__version__"]
