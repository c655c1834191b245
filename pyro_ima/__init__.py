"""pyro-ima: what the ELBO does to a VAE's representation, measured with Pyro."""

from . import data, inference, metrics, mixings, models, priors, sprites

__version__ = "0.1.0"

__all__ = ["data", "inference", "metrics", "mixings", "sprites", "models", "priors", "__version__"]
