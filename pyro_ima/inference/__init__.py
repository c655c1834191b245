"""What is computed from a model/guide pair: training, ELBOs, likelihoods, gaps, evaluation."""

from .elbo import ReplicaTraceELBO, as_replica_batch, elbo_per_point, log_weights, standard_noise
from .evaluate import (
    METRIC_GROUPS,
    EvalConfig,
    evaluate,
    evaluate_replicas,
    summary_line,
    tidy_rows,
)
from .gap import RefineConfig, decoder_inverse, gap_report, refine_elbo, self_consistency
from .likelihood import (
    KHAT_THRESHOLD,
    ISResult,
    LaplaceProposal,
    exact_log_px,
    importance_log_px,
    khat_summary,
    laplace_precision,
    psis_khat,
    reliability,
    std_error,
)
from .optim import Adam, JointOptim
from .posterior import ModeConfig, PosteriorMode, log_joint, posterior_mode
from .traces import PlateStructure, per_point_log_weights, plate_structure
from .train import FitConfig, FitResult, fit, trainable_parameters

__all__ = ["fit", "FitConfig", "FitResult", "trainable_parameters", "Adam", "JointOptim",
           "ReplicaTraceELBO", "elbo_per_point", "log_weights", "as_replica_batch",
           "standard_noise", "exact_log_px", "importance_log_px", "ISResult", "psis_khat",
           "khat_summary", "KHAT_THRESHOLD", "LaplaceProposal", "laplace_precision",
           "refine_elbo", "gap_report", "self_consistency", "decoder_inverse", "evaluate",
           "EvalConfig", "evaluate_replicas", "tidy_rows", "summary_line", "METRIC_GROUPS",
           "per_point_log_weights", "plate_structure", "PlateStructure", "RefineConfig",
           "ModeConfig", "PosteriorMode", "posterior_mode", "log_joint", "reliability",
           "std_error"]
