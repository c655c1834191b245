"""log p(x): exact by change of variables, or importance-sampled per data point with PSIS k-hat."""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np
import pyro
import torch
from torch import nn

from .._utils import as_tensor_on, check_int, check_positive, generator
from ..metrics import jacobian
from ..models.guides import AmortizedGaussianGuide, gaussian_posterior, narrow_guide
from ..models.vae import VAE, GaussianVAE, squeezes_replicas
from .elbo import (
    _check_callables,
    _generic_log_weights,
    as_replica_batch,
    check_chunks,
    check_options,
    log_weights,
)
from .posterior import ModeConfig, mahalanobis, posterior_mode

__all__ = ["exact_log_px", "importance_log_px", "ISResult", "psis_khat", "LaplaceProposal",
           "laplace_precision", "khat_summary", "KHAT_THRESHOLD", "vae_importance_log_px",
           "require_gaussian", "reliability", "RELIABILITY", "std_error"]


_MIN_PSIS_SAMPLES = 5
_CONSTANT_RANGE = 1e-3


def exact_log_px(mixing, prior: torch.distributions.Distribution,
                 x: torch.Tensor) -> torch.Tensor:
    """``log p(x) = log p0(g(x)) - log |det J_f(g(x))|`` for an invertible mixing ``f = g^-1``.

    The noiseless (gamma -> infinity) log-likelihood, per point; ``-inf`` where ``g(x)`` falls
    outside the prior's support. ``mixing`` is a Transform with ``inv`` and
    ``log_abs_det_jacobian``.
    """
    z = mixing.inv(x)
    inside = prior.support.check(z)
    safe = torch.where(inside.unsqueeze(-1), z, prior.mean.to(z))  # broadcasts (learned priors)
    lp = prior.log_prob(safe) - mixing.log_abs_det_jacobian(safe, x)
    return torch.where(inside, lp, torch.full_like(lp, -math.inf))


def _arviz():
    """ArviZ, imported without its once-a-day FutureWarning about the 1.0 refactor (it is
    addressed to ArviZ's users, not to ours)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        import arviz
    return arviz


def psis_khat(log_weights: np.ndarray | torch.Tensor) -> np.ndarray:
    """Pareto k-hat of each row of ``log_weights`` ``(..., K)`` by ArviZ's PSIS.

    The one place that speaks to ArviZ: 0.x has ``arviz.psislw(lw)``; 1.x has
    ``arviz_stats.base.array_stats.psislw(-lw)`` (it smooths log-likelihood-like values, hence
    the sign).

    Rows whose log-weights span less than 1e-3 nats (a perfect proposal, up to float rounding)
    get ``-inf``; where ArviZ cannot fit the tail (or with fewer than 5 samples) ``NaN``.
    """
    lw = log_weights.detach().cpu().double().numpy() if torch.is_tensor(log_weights) \
        else np.asarray(log_weights, dtype=np.float64)
    arviz = _arviz()
    shape = lw.shape[:-1]
    flat = lw.reshape(-1, lw.shape[-1])
    if flat.shape[-1] < _MIN_PSIS_SAMPLES:
        return np.full(shape, np.nan)
    if int(arviz.__version__.split(".")[0]) >= 1:  # pragma: no cover - needs Python >= 3.12
        from arviz_stats.base import array_stats
        _, khat = array_stats.psislw(-flat, r_eff=1.0, axis=-1)
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # all-equal weights: k-hat -inf/nan
            _, khat = arviz.psislw(flat, reff=1.0)
    khat = np.asarray(khat, dtype=np.float64).reshape(shape)
    # Weights equal up to float rounding have no tail to fit: a perfect proposal.
    flat_range = (flat.max(-1) - flat.min(-1)).reshape(shape)
    return np.where(flat_range < _CONSTANT_RANGE, -np.inf, khat)


class LaplaceProposal(nn.Module):
    """A fixed Gaussian proposal ``r(z | x) = T(N(loc, L L^T))`` per point, used like a guide.

    ``loc`` ``(R, B, d)`` and ``scale_tril`` ``(R, B, d, d)`` live in the guide's unconstrained
    coordinates; ``T`` is the prior's support bijection.
    """

    def __init__(self, model: GaussianVAE, loc: torch.Tensor, scale_tril: torch.Tensor,
                 bijection=None):
        super().__init__()
        object.__setattr__(self, "model", model)
        self.loc, self.scale_tril, self.bijection = loc, scale_tril, bijection

    def posterior(self, x=None, eps=None):
        return gaussian_posterior(self.loc, self.scale_tril, self.bijection, eps)

    def guide(self, x, eps=None, full_size=None):
        with self.model.plates(x, full_size), self.model.latent_scale():
            return pyro.sample("z", self.posterior(x, eps))


@squeezes_replicas
def laplace_precision(vae: GaussianVAE, guide: AmortizedGaussianGuide,
                      u: torch.Tensor) -> torch.Tensor:
    """``P = J^T Sigma_x^-1 J - Hess log p0`` at unconstrained points ``u`` ``(N, d)`` or
    ``(R, N, d)``; returns ``(R, N, d, d)`` (``(N, d, d)`` for ``replicas=None``).

    ``J`` is the Jacobian of ``u -> f(T(u))`` and ``p0`` the prior density in the ``u``
    coordinates (``p0(T(u)) |det dT/du|``), so the same formula serves bounded priors. The
    residual term ``(x - f) Hess f`` is dropped (it vanishes at ``u = g(x)``).
    """
    require_gaussian(vae)
    T = guide.bijection
    u = as_tensor_on(u, vae.device, vae.dtype)
    u = u.expand((vae.replicas,) + u.shape) if u.dim() == 2 else u

    def decode(v):
        return vae.decoder(v if T is None else T(v))

    def log_prior(v):
        if T is None:
            return vae.prior.log_prob(v)
        z = T(v)
        return vae.prior.log_prob(z) + T.log_abs_det_jacobian(v, z)

    J = jacobian(decode, u, mode="fwd")  # (R, B, D, d), image outputs flattened
    batch = u.shape[:-1]
    with torch.no_grad():
        event = vae.decoder(u[..., :1, :] if T is None else T(u[..., :1, :])).shape[len(batch):]
    prec_x = (1.0 / vae.obs_scale().square()).expand(batch + event).reshape(batch + (-1,))
    JtSJ = J.transpose(-1, -2) @ (prec_x.unsqueeze(-1) * J)
    # Hessian of the (pointwise) log prior: one backward pass per latent direction.
    with torch.enable_grad():
        v = u.detach().requires_grad_(True)
        grad = torch.autograd.grad(log_prior(v).sum(), v, create_graph=True)[0]
        rows = [torch.autograd.grad(grad[..., k].sum(), v, retain_graph=True)[0]
                for k in range(u.shape[-1])]
    hess = torch.stack(rows, dim=-2)
    return JtSJ - hess.detach()


KHAT_THRESHOLD = 0.7
"""PSIS k-hat above which an importance-sampling estimate is not to be trusted."""

KHAT_CLIP = (-1.0, 10.0)


def khat_summary(khat: torch.Tensor, threshold: float = KHAT_THRESHOLD) -> dict[str, torch.Tensor]:
    """The one definition of the k-hat summaries, over the last dim (points): ``(...)`` each.

    ``khat_median``: the median over the points that have a k-hat (NaN, too few samples, is
    left out), clipped to ``[-1, 10]`` so it stays a number: a point whose weights were all
    equal (k-hat ``-inf``, a perfect proposal) counts as -1, one where a single weight dominates
    (ArviZ's ``+inf``) as 10. ``khat_frac_above``: the share of those points above
    ``threshold`` (``+inf`` included).
    """
    k = khat.double()
    has = ~torch.isnan(k)
    median = k.clamp(*KHAT_CLIP).nanmedian(-1).values
    above = ((k > threshold) & has).sum(-1).double() / has.sum(-1).clamp(min=1)
    return {"khat_median": median, "khat_frac_above": above}


@dataclass
class ISResult:
    """Per-point importance-sampling results (shape ``(N,)``, or ``(R, N)`` with replicas).

    ``log_px``: ``logsumexp_k w_k - log K``; ``elbo``: the mean log-weight (the ELBO of the
    proposal, from the same draws); ``ess``: effective sample size; ``khat``: PSIS Pareto k-hat;
    ``num_samples``: ``K``; ``reliable``: the per-point verdict of :func:`reliability`;
    ``mode_distance`` (library VAEs): how far the proposal's centre is from the posterior mode,
    in posterior standard deviations (Mahalanobis under the Laplace precision);
    ``mode_found``: whether the mode was found there.
    """

    log_px: torch.Tensor
    elbo: torch.Tensor
    ess: torch.Tensor
    khat: torch.Tensor
    num_samples: int
    reliable: torch.Tensor | None = None
    mode_distance: torch.Tensor | None = None
    mode_found: torch.Tensor | None = None

    def summary(self) -> dict:
        """Means over the points (replicas pooled), the k-hat summaries of
        :func:`khat_summary` and the share of points flagged unreliable."""
        k = khat_summary(self.khat.reshape(-1))
        out = {"log_px": float(self.log_px.mean()), "elbo": float(self.elbo.mean()),
               "ess_median": float(self.ess.median()),
               "khat_median": float(k["khat_median"]),
               "khat_frac_above": float(k["khat_frac_above"])}
        if self.reliable is not None:
            out["flagged_frac"] = float((~self.reliable).double().mean())
        return out


def _is_estimates(lw: torch.Tensor) -> dict[str, torch.Tensor]:
    """The per-point IS quantities from log-weights ``(K, ..., B)`` (float64)."""
    lw = lw.double()
    lse = torch.logsumexp(lw, 0)
    khat = torch.from_numpy(psis_khat(torch.movedim(lw, 0, -1))).to(lw.device)
    return {"log_px": lse - math.log(lw.shape[0]), "elbo": lw.mean(0),
            "ess": torch.exp(2 * lse - torch.logsumexp(2 * lw, 0)), "khat": khat}


def _warn_unreliable(res: ISResult, warn_above: float, remedy: str) -> None:
    frac = float((~res.reliable).double().mean())
    if frac > warn_above:
        warnings.warn(f"importance_log_px: {frac:.0%} of points are flagged unreliable (PSIS "
                      f"k-hat > {KHAT_THRESHOLD}, a standard error above "
                      f"{RELIABILITY['max_std_error']} nats, or a proposal off the posterior "
                      f"mode); their log p(x) estimates are not to be trusted (try {remedy})",
                      RuntimeWarning, stacklevel=3)


def require_gaussian(vae) -> None:
    """The Gaussian-VAE layer (Laplace proposal, ELBO*, gap predictions) needs a decoder mean,
    a prior and an observation scale: refuse other models, naming ``vae``."""
    if not isinstance(vae, GaussianVAE):
        raise TypeError(f"vae: this needs a GaussianVAE (a decoder mean, a prior and an "
                        f"observation scale), got {type(vae).__name__}")


RELIABILITY = {"max_std_error": 0.02, "ess_frac": 0.9, "min_ess_frac": 0.1,
               "max_distance": 0.5}
"""The thresholds of :func:`reliability` (calibrated by ``benchmarks/calibrate_reliability.py``)."""


def std_error(ess: torch.Tensor, num_samples: int) -> torch.Tensor:
    """The Monte Carlo standard error of ``log p_K(x)`` implied by the effective sample size,
    ``sqrt(1/ESS - 1/K)`` (nats; it assumes the weights' variance is finite)."""
    return (1.0 / ess.clamp(min=1e-300) - 1.0 / num_samples).clamp(min=0).sqrt()


def reliability(khat: torch.Tensor, ess: torch.Tensor, num_samples: int,
                mode_distance: torch.Tensor | None = None,
                mode_found: torch.Tensor | None = None) -> torch.Tensor:
    """Whether each point's importance-sampled ``log p(x)`` can be trusted: a bool tensor.

    PSIS k-hat alone misjudges both ways: with nearly equal weights its tail fit is noise and
    it flags accurate estimates, and light-tailed weights (low k-hat) from few effective samples
    or from a proposal off the posterior mode still give errors of tenths of a nat. A point is
    reliable when all of these hold:

    - the standard error implied by the effective sample size, :func:`std_error`, is at most
      0.02 nats (more samples ``K`` lower it), and the proposal is not so poor that fewer than
      10% of the samples count (``ESS/K >= 0.1``: below, the sampled weights miss the tail and
      the standard error is underestimated);
    - the weights' tail is light (k-hat <= 0.7), or they are nearly equal (``ESS/K >= 0.9``),
      where a tail fit says nothing;
    - where the posterior mode is known (library VAEs): it was found, and the proposal's centre
      lies within 0.5 posterior standard deviations of it.

    On the known-answer cases of ``benchmarks/calibrate_reliability.py`` this flags 99% of the
    estimates that are off by more than 0.05 nats (k-hat alone: 40%); see the README.
    """
    frac = ess / num_samples
    ok = (std_error(ess, num_samples) <= RELIABILITY["max_std_error"]) & (
        frac >= RELIABILITY["min_ess_frac"]) & (
        (frac >= RELIABILITY["ess_frac"]) | (khat <= KHAT_THRESHOLD))
    if mode_distance is not None:
        ok = ok & (mode_distance <= RELIABILITY["max_distance"])
    if mode_found is not None:
        ok = ok & mode_found
    return ok


@squeezes_replicas
def vae_importance_log_px(vae: VAE, guide: AmortizedGaussianGuide, x, *,
                          num_samples: int = 1000, proposal: str = "guide", widen: float = 1.0,
                          seed: int = 0, chunk_size: int | None = 100,
                          sample_chunk: int | None = 250, khat_warn: float = 0.1,
                          mode: ModeConfig = ModeConfig()) -> ISResult:
    """:func:`importance_log_px` for the library's VAEs: results ``(R, N)`` (``(N,)`` for
    ``replicas=None``), float64."""
    check_int("num_samples", num_samples)
    check_chunks(chunk_size, sample_chunk)
    check_positive("widen", widen)
    if proposal not in ("guide", "laplace"):
        raise ValueError(f"proposal: expected 'guide' or 'laplace', got {proposal!r}")
    x = as_replica_batch(vae, x)
    n = x.shape[1]
    chunk_size, sample_chunk = chunk_size or n, sample_chunk or num_samples
    g = generator(seed, vae.device)
    parts = []
    for start in range(0, n, chunk_size):
        xs = x.narrow(1, start, min(chunk_size, n - start))
        b = xs.shape[1]
        gs = narrow_guide(guide, start, b)
        with torch.no_grad():
            loc = gs.loc(xs)
            m = posterior_mode(vae, xs, loc, guide.bijection, config=mode)
            L_guide = gs.scale_tril(xs)
            if proposal == "guide":
                center, L = loc, L_guide * widen
            else:  # the Laplace Gaussian at the mode; the guide where no mode was found
                P = torch.where(m.found[..., None, None], m.precision,
                                torch.eye(vae.latent_dim, device=vae.device, dtype=vae.dtype))
                L_lap = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(P)))
                center = torch.where(m.found.unsqueeze(-1), m.u, loc)
                L = torch.where(m.found[..., None, None], L_lap, L_guide) * widen
            r = LaplaceProposal(vae, center, L, guide.bijection)
            lw = []
            for s0 in range(0, num_samples, sample_chunk):
                k = min(sample_chunk, num_samples - s0)
                eps = torch.randn((k, vae.replicas, b, vae.latent_dim), generator=g,
                                  device=vae.device, dtype=vae.dtype)
                lw.append(log_weights(vae, r, xs, eps).double())
            est = _is_estimates(torch.cat(lw, 0))  # from (K, R, b)
            P_mode = torch.where(m.found[..., None, None], m.precision,
                                 torch.zeros_like(m.precision))
            est["mode_distance"] = torch.where(m.found, mahalanobis(center, m.u, P_mode),
                                               torch.full_like(m.decrement, float("inf")))
            est["mode_found"] = m.found
            parts.append(est)
    cat = {k: torch.cat([p[k] for p in parts], -1) for k in parts[0]}
    cat["reliable"] = reliability(cat["khat"], cat["ess"], num_samples, cat["mode_distance"],
                                  cat["mode_found"])
    res = ISResult(**cat, num_samples=num_samples)
    _warn_unreliable(res, khat_warn, "widen > 1 or more samples" if proposal == "laplace" else
                     "proposal='laplace', widen > 1 or more samples")
    return res


_VAE_IS_OPTIONS = ("num_samples", "seed", "khat_warn", "proposal", "widen", "chunk_size",
                   "sample_chunk", "mode")


def importance_log_px(model, guide, *args, num_samples: int = 1000, seed: int = 0,
                      khat_warn: float = 0.1, **kwargs) -> ISResult:
    """Importance-sampled ``log p(x)`` for every data point, from Pyro traces.

    ``log p_K(x) = logsumexp_k [log p(x, z_k) - log r(z_k | x)] - log K`` with the unscaled
    log-densities, one estimate per point (never pooled across the batch, so it is the same
    for any chunking or subsampling), with the ELBO of the same draws, the effective sample
    size and the PSIS Pareto k-hat of each point's weights (k-hat > 0.7: not to be trusted; a
    warning when more than ``khat_warn`` of the points are). With the guide as proposal this is
    the IWAE bound: below ``log p(x)`` in expectation, rising to it with ``K``.

    Two ways to call it:

    - ``importance_log_px(model_fn, guide_fn, *args, num_samples=K, ...)`` for any Pyro model
      whose local latents sit in a ``"data"`` plate, with any Pyro guide as the proposal (the
      trained guide, a widened one, ...); ``args``/``kwargs`` go to both. Further keywords:
      ``chunk_size`` (points per chunk, slicing tensor arguments along ``data_dim``),
      ``sample_chunk`` (particles per pass, default 250), ``data_plate``, ``replica_plate``.
      Draws come from PyTorch's RNG seeded with ``seed`` (forked).
    - ``importance_log_px(vae, guide, x, proposal="guide" | "laplace", widen=1.0, ...)`` for a
      library VAE: ``"laplace"`` (Gaussian VAEs) is ``N(u*, widen^2 P^-1)`` at each point's
      posterior mode ``u*`` (found by damped Newton from the guide's mean; where none is found,
      the guide's own Gaussian, and the point is flagged) with the full Laplace precision ``P``
      there (:func:`laplace_precision`), the better
      proposal in the near-deterministic regime where a diagonal ``q`` is too narrow along
      correlated directions; chunks of ``chunk_size`` points (default 100) by
      ``sample_chunk`` samples (default 250) bound memory (K = 1000 on 10,000 points, d = 3:
      about 300 MB above the process's baseline); ``mode`` sets how the posterior mode is found.
      Results are ``(R, N)`` (``(N,)`` for ``replicas=None``).

    Both take ``chunk_size`` and ``sample_chunk`` (``None``: no chunking); any other keyword a
    library VAE does not take is refused naming it.
    """
    if isinstance(model, VAE):
        if len(args) != 1:
            raise TypeError("x: importance_log_px(vae, guide, x) takes the data as its one "
                            "positional argument")
        check_options("importance_log_px(vae, guide, x)", kwargs, _VAE_IS_OPTIONS)
        return vae_importance_log_px(model, guide, args[0], num_samples=num_samples,
                                     seed=seed, khat_warn=khat_warn, **kwargs)
    check_int("num_samples", num_samples)
    _check_callables(model, guide)
    if "proposal" in kwargs or "widen" in kwargs:
        raise TypeError("proposal: with a plain Pyro model the proposal is the guide you pass; "
                        "proposal= and widen= are for the library's VAEs")
    opts = {k: kwargs.pop(k) for k in ("chunk_size", "data_dim", "data_plate", "replica_plate",
                                        "sample_chunk") if k in kwargs}
    opts.setdefault("sample_chunk", 250)
    lw = _generic_log_weights(model, guide, args, kwargs, num_particles=num_samples,
                              seed=seed, chunk_size=opts.get("chunk_size"),
                              data_dim=opts.get("data_dim", 0),
                              data_plate=opts.get("data_plate", "data"),
                              replica_plate=opts.get("replica_plate", "replicas"),
                              sample_chunk=opts["sample_chunk"])
    est = _is_estimates(lw)
    res = ISResult(**est, num_samples=num_samples,
                   reliable=reliability(est["khat"], est["ess"], num_samples))
    _warn_unreliable(res, khat_warn, "a wider proposal guide or more samples")
    return res
