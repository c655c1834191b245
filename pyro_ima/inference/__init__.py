"""What is computed from a model/guide pair: training, ELBOs, likelihoods, gaps."""

from .elbo import as_replica_batch, elbo_per_point, log_weights, standard_noise
from .train import FitResult, fit, trainable_parameters

__all__ = ["fit", "FitResult", "trainable_parameters", "elbo_per_point", "log_weights",
           "as_replica_batch", "standard_noise"]
