"""What is computed from a model/guide pair: training, ELBOs, likelihoods, gaps."""

from .elbo import as_replica_batch, elbo_per_point, log_weights, standard_noise
from .gap import (
    decoder_inverse,
    gap_report,
    predicted_gap,
    predicted_variances,
    refine_elbo,
    self_consistency,
)
from .likelihood import (
                         ISResult,
                         LaplaceProposal,
                         exact_log_px,
                         importance_log_px,
                         laplace_precision,
                         psis_khat,
)
from .tidy import evaluate_replicas
from .train import FitResult, fit, trainable_parameters

__all__ = ["fit", "FitResult", "trainable_parameters", "elbo_per_point", "log_weights",
           "as_replica_batch", "standard_noise", "exact_log_px", "importance_log_px",
           "ISResult", "psis_khat", "LaplaceProposal", "laplace_precision", "predicted_gap",
           "predicted_variances", "refine_elbo", "gap_report", "self_consistency",
           "decoder_inverse",
           "evaluate_replicas"]
