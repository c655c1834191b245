"""Amortized Gaussian guides: one base class, three covariance families with their maths."""

from __future__ import annotations

import math

import pyro
import pyro.distributions as dist
import torch
from torch import nn
from torch.distributions import biject_to, constraints
from torch.distributions.transforms import AffineTransform, Transform

from .._utils import as_tensor_on
from .vae import VAE, unique_name

__all__ = ["AmortizedGaussianGuide", "DiagonalGuide", "IsotropicGuide", "FullCovGuide",
           "GUIDES", "support_bijection", "TrilAffineTransform", "softplus_inverse",
           "narrow_guide"]


def _is_real(support: constraints.Constraint) -> bool:
    while isinstance(support, constraints.independent):
        support = support.base_constraint
    return support is constraints.real


def support_bijection(support: constraints.Constraint) -> Transform | None:
    """The fixed bijection from R^d onto a prior's support, or ``None`` for R^d itself.

    This is ``torch.distributions.biject_to(support)``: for a box ``[a, b]`` it is
    ``u -> a + (b - a) sigmoid(u)`` elementwise, for ``(0, 1)`` the sigmoid.
    """
    return None if _is_real(support) else biject_to(support).with_cache(1)


def softplus_inverse(y: torch.Tensor) -> torch.Tensor:
    """``x`` with ``softplus(x) = y``, for ``y > 0``."""
    return y + torch.log(-torch.expm1(-y))


class TrilAffineTransform(Transform):
    """Creates ``y = loc + L x`` for a batch of lower-triangular ``L`` with positive diagonal.

    (Pyro's ``LowerCholeskyAffine`` takes one unbatched ``L``.) Arguments: ``loc`` ``(*, d)``,
    ``scale_tril`` ``(*, d, d)``.
    """

    domain = constraints.real_vector
    codomain = constraints.real_vector
    bijective = True

    def __init__(self, loc: torch.Tensor, scale_tril: torch.Tensor, cache_size: int = 0):
        super().__init__(cache_size=cache_size)
        self.loc, self.scale_tril = loc, scale_tril

    def _call(self, x):
        return self.loc + (self.scale_tril @ x.unsqueeze(-1)).squeeze(-1)

    def _inverse(self, y):
        return torch.linalg.solve_triangular(
            self.scale_tril, (y - self.loc).unsqueeze(-1), upper=False).squeeze(-1)

    def log_abs_det_jacobian(self, x, y):
        logdet = self.scale_tril.diagonal(dim1=-2, dim2=-1).log().sum(-1)
        return logdet.expand(torch.broadcast_shapes(logdet.shape, x.shape[:-1]))

    def with_cache(self, cache_size=1):
        return self if self._cache_size == cache_size else TrilAffineTransform(
            self.loc, self.scale_tril, cache_size)


class _ProvidedNoise(dist.TorchDistribution):
    """A standard normal whose ``rsample`` returns given draws ``eps`` (shape ``batch + (d,)``).

    Lets training feed each replica its own noise stream through Pyro's ordinary sampling.
    """

    arg_constraints: dict = {}
    support = constraints.real_vector
    has_rsample = True

    def __init__(self, eps: torch.Tensor):
        self.eps = eps
        super().__init__(eps.shape[:-1], eps.shape[-1:], validate_args=False)

    def expand(self, batch_shape, _instance=None):
        return _ProvidedNoise(self.eps.expand(tuple(batch_shape) + self.event_shape))

    def rsample(self, sample_shape=()):
        if sample_shape:
            raise ValueError("eps: provided noise cannot draw extra samples; "
                             "give eps the full (particles, ..., d) shape")
        return self.eps

    def log_prob(self, value):
        return -0.5 * (value.square() + math.log(2 * math.pi)).sum(-1)


def gaussian_posterior(loc: torch.Tensor, scale_tril: torch.Tensor, bijection=None,
                       eps: torch.Tensor | None = None) -> dist.Distribution:
    """``T(N(loc, L L^T))`` as a distribution (``T`` a support bijection or ``None``); with
    ``eps`` its ``rsample`` maps those standard normal draws."""
    base = (dist.Normal(torch.zeros_like(loc), 1.0).to_event(1) if eps is None
            else _ProvidedNoise(eps))
    transforms = [TrilAffineTransform(loc, scale_tril, cache_size=1)]
    if bijection is not None:
        transforms.append(bijection)
    return dist.TransformedDistribution(base, transforms)


class AmortizedGaussianGuide(nn.Module):
    """Creates ``q(z | x) = T( mu(x) + A(x) eps )``, ``eps ~ N(0, I_d)``, amortized over ``x``.

    ``A(x)`` is what distinguishes the families (diagonal, isotropic, full lower-triangular),
    and ``T`` is the fixed bijection of :func:`support_bijection` onto the prior's support (the
    identity for priors on R^d). For a bounded prior the guide is thus a Gaussian in the
    unconstrained coordinates ``u`` pushed onto the support, and ``log q`` includes
    ``-log|det dT/du|``: an exactly normalized density on the support.

    Each family also carries its maths for a Gaussian posterior of precision ``P``: the
    KL(q||p)-optimal covariance in the family (:meth:`optimal_covariance`), hence the predicted
    encoder variances and the predicted gap (docs/theory.md, section 3).

    The guide's methods (``loc``, ``covariance``, ``posterior``, ...) keep the batch shape of
    ``x``: ``(N, D)`` gives ``(N, ...)`` for a one-replica model, ``(R, N, D)`` gives
    ``(R, N, ...)``.

    Arguments:
        model: the :class:`VAE` this guide serves (prior support, beta, replicas).
        encoder: a network mapping ``x`` to ``d + num_scale_params(d)`` numbers: the mean
            ``mu(x)`` first, then the family's raw scale parameters, which pass through
            ``softplus`` (not ``exp``). An encoder in Pyro's own convention may instead return
            a pair ``(loc, scale)`` with positive scales ``(*, d)`` (diagonal), ``(*, 1)``
            (isotropic) or a lower-triangular ``scale_tril`` ``(*, d, d)`` (full).
        init_scale: shifts the raw scale parameters so that a raw output of 0 gives this
            standard deviation (default ``None``: ``softplus(0) = 0.69``). In the
            near-deterministic regime ``1 / sqrt(gamma2)`` saves many early epochs. It may be
            one value per replica (a sequence or tensor of length ``R``).
    """

    family = "base"

    def __init__(self, model: VAE, encoder: nn.Module, *, init_scale=None):
        super().__init__()
        if not isinstance(model, VAE):
            raise TypeError(f"model: expected a pyro_ima VAE (GaussianVAE, BernoulliVAE), "
                            f"got {type(model).__name__}")
        object.__setattr__(self, "model", model)  # not a submodule: its params are the model's
        self.encoder = encoder
        self.latent_dim = model.latent_dim
        self.replicas = model.replicas
        enc_rep = getattr(encoder, "replicas", None)
        if enc_rep is not None and enc_rep != model.replicas:
            raise ValueError(f"encoder: has replicas={enc_rep} but the model has "
                             f"{model.replicas} replica(s)")
        out = getattr(encoder, "out_features", None)
        if out is not None and out != self.num_outputs(self.latent_dim):
            raise ValueError(f"encoder: expected {self.num_outputs(self.latent_dim)} outputs "
                             f"for a {type(self).__name__} with d={self.latent_dim}, got {out}")
        self.pyro_name = unique_name("guide")
        self._loc_override = None
        self.register_buffer("raw_shift", self._shift_from(init_scale))

    def _shift_from(self, init_scale) -> torch.Tensor:
        """``(R,)``: the raw shift that makes a raw output of 0 give ``init_scale``."""
        like = {"device": self.model.device, "dtype": self.model.dtype}
        if init_scale is None:
            return torch.zeros(self.replicas, **like)
        if isinstance(init_scale, bool):
            raise TypeError("init_scale: expected a positive number, got a bool")
        scale = torch.as_tensor(init_scale, **like).flatten()
        if scale.numel() == 1:
            scale = scale.expand(self.replicas)
        if scale.numel() != self.replicas:
            raise ValueError(f"init_scale: expected a number or one value per replica "
                             f"({self.replicas} replicas), got {scale.numel()} values")
        min_scale = torch.finfo(scale.dtype).tiny ** 0.25  # its square must stay normal
        if not bool((torch.isfinite(scale) & (scale > min_scale)).all()):
            raise ValueError(f"init_scale: expected finite values > {min_scale:.1e}, "
                             f"got {scale.tolist()}")
        return softplus_inverse(scale.clone())

    def _shift(self, t: torch.Tensor) -> torch.Tensor:
        """The raw shift, broadcastable against ``t`` whose leading dim is the replica dim."""
        return self.raw_shift.reshape((-1,) + (1,) * (t.dim() - 1))

    @property
    def bijection(self) -> Transform | None:
        """The prior's support bijection ``T`` (follows the model's device and dtype)."""
        support = self.model.prior_support
        if getattr(self, "_bijection_of", None) is not support:
            self._bijection, self._bijection_of = support_bijection(support), support
        return self._bijection

    # -- family interface -------------------------------------------------------------------
    @classmethod
    def num_scale_params(cls, d: int) -> int:
        raise NotImplementedError

    @classmethod
    def num_outputs(cls, d: int) -> int:
        """How many outputs the encoder needs for latent size ``d``."""
        return d + cls.num_scale_params(d)

    @classmethod
    def tril_from_raw(cls, raw: torch.Tensor, shift: torch.Tensor | float,
                      d: int) -> torch.Tensor:
        """The Cholesky factor ``A`` of this family's form from raw parameters ``(*, k)``:
        positive entries through ``softplus(raw + shift)``."""
        raise NotImplementedError

    @classmethod
    def raw_from_tril(cls, L: torch.Tensor, shift: torch.Tensor | float) -> torch.Tensor:
        """The inverse of :meth:`tril_from_raw` on this family's Cholesky factors."""
        raise NotImplementedError

    @classmethod
    def optimal_covariance(cls, P: torch.Tensor) -> torch.Tensor:
        """The covariance in this family closest to ``N(m, P^-1)`` in KL(q||p), ``(*, d, d)``."""
        raise NotImplementedError

    @classmethod
    def predicted_variances(cls, P: torch.Tensor) -> torch.Tensor:
        """The optimal guide variances per latent ``(*, d)`` for posterior precision ``P``
        (the diagonal family's is the paper's eq. 12, ``1 / P_kk``)."""
        return cls.optimal_covariance(P).diagonal(dim1=-2, dim2=-1)

    @classmethod
    def predicted_gap(cls, P: torch.Tensor) -> torch.Tensor:
        """The linearized gap ``KL(q* || N(m, P^-1))`` of this family, ``P.shape[:-2]``.

        ``1/2 (tr(P S) - d - log det P - log det S)`` with ``S`` the optimal covariance: the
        diagonal family's ``1/2 (sum log P_kk - log det P)``, the isotropic family's
        ``1/2 (d log(tr P / d) - log det P)``, 0 for the full family (exact for linear decoders).
        """
        S = cls.optimal_covariance(P)
        d = P.shape[-1]
        trace = (P * S.transpose(-1, -2)).sum((-2, -1))
        return 0.5 * (trace - d - torch.linalg.slogdet(P)[1] - torch.linalg.slogdet(S)[1])

    # -- shared -----------------------------------------------------------------------------
    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(mu(x), raw scale parameters)`` in the unconstrained coordinates (``x`` is taken to
        the model's device and dtype)."""
        x = as_tensor_on(x, self.model.device, self.model.dtype)
        h = self.encoder(x)
        if isinstance(h, (tuple, list)):  # Pyro's convention: (loc, positive scale)
            loc, raw = self._from_pair(h)
        else:
            loc, raw = h[..., : self.latent_dim], h[..., self.latent_dim:]
        if self._loc_override is not None:
            loc = self._loc_override(x)
        return loc, raw

    def _from_pair(self, h) -> tuple[torch.Tensor, torch.Tensor]:
        """``(loc, raw)`` from an encoder that returned ``(loc, scale)``, checked."""
        if len(h) != 2:
            raise ValueError(f"encoder: returned {len(h)} tensors; expected one tensor or a pair "
                             f"(loc, scale)")
        loc, scale = h
        d, shape = self.latent_dim, self.scale_shape(self.latent_dim)
        if loc.shape[-1] != d or tuple(scale.shape[scale.dim() - len(shape):]) != shape:
            raise ValueError(f"encoder: returned (loc, scale) of shapes {tuple(loc.shape)}, "
                             f"{tuple(scale.shape)}; a {type(self).__name__} with d={d} needs "
                             f"(..., {d}) and (..., {', '.join(map(str, shape))})")
        diag = scale.diagonal(dim1=-2, dim2=-1) if len(shape) == 2 else scale
        if not bool((diag > 0).all()):
            raise ValueError("encoder: returned a scale that is not positive; (loc, scale) "
                             "pairs take standard deviations (exp of a log-scale), not logs")
        return loc, self.raw_from_scale_tril(self.tril_from_scale(scale))

    @classmethod
    def scale_shape(cls, d: int) -> tuple[int, ...]:
        """The trailing shape of this family's ``scale`` in a ``(loc, scale)`` pair."""
        raise NotImplementedError

    @classmethod
    def tril_from_scale(cls, scale: torch.Tensor) -> torch.Tensor:
        """The Cholesky factor of this family's ``scale`` (a pair's second element)."""
        return torch.diag_embed(scale)

    def loc(self, x: torch.Tensor) -> torch.Tensor:
        """The Gaussian mean ``mu(x)`` in unconstrained coordinates, ``(*, d)``."""
        return self.encode(x)[0]

    def scale_tril(self, x: torch.Tensor) -> torch.Tensor:
        """The Cholesky factor ``A(x)`` of the unconstrained covariance, ``(*, d, d)``."""
        raw = self.encode(x)[1]
        return self.tril_from_raw(raw, self._shift(raw), self.latent_dim)

    def raw_from_scale_tril(self, L: torch.Tensor) -> torch.Tensor:
        """Raw scale parameters that give the Cholesky factor ``L`` (of this family's form)."""
        return self.raw_from_tril(L, self._shift(L[..., 0]))

    def raw_from_covariance(self, cov: torch.Tensor) -> torch.Tensor:
        """Raw scale parameters whose covariance is this family's KL(q||p)-optimal fit to a
        Gaussian posterior with covariance ``cov`` ``(*, d, d)``."""
        S = self.optimal_covariance(torch.linalg.inv(cov))
        return self.raw_from_scale_tril(torch.linalg.cholesky(S))

    def point_estimate(self, x: torch.Tensor) -> torch.Tensor:
        """``T(mu(x))``: the posterior mean for R^d priors, its median on bounded supports."""
        loc = self.loc(x)
        return loc if self.bijection is None else self.bijection(loc)

    def covariance(self, x: torch.Tensor) -> torch.Tensor:
        """The unconstrained covariance ``A A^T``, ``(*, d, d)``."""
        a = self.scale_tril(x)
        return a @ a.transpose(-1, -2)

    def posterior(self, x: torch.Tensor, eps: torch.Tensor | None = None) -> dist.Distribution:
        """``q(z | x)`` with batch shape ``x``'s batch shape and event shape ``(d,)``.

        With ``eps`` (standard normal draws, ``(*, d)``) its ``rsample`` returns the map of those
        draws instead of fresh ones; ``log_prob`` is unchanged.
        """
        loc, raw = self.encode(x)
        L = self.tril_from_raw(raw, self._shift(raw), self.latent_dim)
        return gaussian_posterior(loc, L, self.bijection, eps)

    def guide(self, x: torch.Tensor, eps: torch.Tensor | None = None,
              full_size: int | None = None) -> torch.Tensor:
        """The Pyro guide: samples site ``z`` inside the model's plates and beta scale."""
        pyro.module(self.pyro_name, self)
        x = self.model.as_replica_batch(x)
        with self.model.plates(x, full_size), self.model.latent_scale():
            return pyro.sample("z", self.posterior(x, eps))

    def forward(self, *args, **kwargs):
        return self.guide(*args, **kwargs)

    def with_encoder(self, encoder: nn.Module) -> AmortizedGaussianGuide:
        """A guide of the same family, scale shift and model with another ``encoder``."""
        new = type(self)(self.model, encoder)
        new.raw_shift.copy_(self.raw_shift)
        new._loc_override = self._loc_override
        return new

    def narrow(self, start: int, length: int) -> AmortizedGaussianGuide:
        """The guide for points ``start .. start + length - 1`` of a batch, for estimators that
        evaluate a batch in chunks.

        An amortized encoder answers for any ``x``, so this is the guide itself. A guide bound to
        the points it was refined on (``refine_elbo(..., return_guides=True)``) answers for
        exactly those points; narrowed, it answers for exactly that run of them (and still
        refuses any other data).
        """
        narrow_points = getattr(self.encoder, "narrow_points", None)
        return self if narrow_points is None else self.with_encoder(narrow_points(start, length))

    def fix_loc(self, fn):
        """Replace ``mu(x)`` by ``fn(x)`` (e.g. the true inverse) until ``fix_loc(None)``.

        The paper's warm-up for large gamma: train only the scales while the mean is pinned.
        """
        self._loc_override = fn


class DiagonalGuide(AmortizedGaussianGuide):
    """Creates ``q(z | x) = N(mu(x), diag(sigma^2(x)))``, ``sigma = softplus(raw)`` (the paper)."""

    family = "diagonal"

    @classmethod
    def num_scale_params(cls, d):
        return d

    @classmethod
    def scale_shape(cls, d):
        return (d,)

    @classmethod
    def tril_from_raw(cls, raw, shift, d):
        return torch.diag_embed(torch.nn.functional.softplus(raw + shift))

    @classmethod
    def raw_from_tril(cls, L, shift):
        return softplus_inverse(L.diagonal(dim1=-2, dim2=-1)) - shift

    @classmethod
    def optimal_covariance(cls, P):
        return torch.diag_embed(1.0 / P.diagonal(dim1=-2, dim2=-1))

    def posterior(self, x, eps=None):
        # the affine map as an elementwise scale: the same density, cheaper than a triangular one
        loc, raw = self.encode(x)
        scale = torch.nn.functional.softplus(raw + self._shift(raw))
        return _elementwise_posterior(loc, scale, self.bijection, eps)


class IsotropicGuide(AmortizedGaussianGuide):
    """Creates ``q(z | x) = N(mu(x), sigma^2(x) I)``, one ``sigma = softplus(raw)`` per point."""

    family = "isotropic"

    @classmethod
    def num_scale_params(cls, d):
        return 1

    @classmethod
    def scale_shape(cls, d):
        return (1,)

    @classmethod
    def tril_from_raw(cls, raw, shift, d):
        scale = torch.nn.functional.softplus(raw + shift)
        return torch.diag_embed(scale.expand(raw.shape[:-1] + (d,)))

    @classmethod
    def raw_from_tril(cls, L, shift):
        return softplus_inverse(L.diagonal(dim1=-2, dim2=-1)[..., :1]) - shift

    @classmethod
    def optimal_covariance(cls, P):
        d = P.shape[-1]
        var = d / P.diagonal(dim1=-2, dim2=-1).sum(-1)
        return var[..., None, None] * torch.eye(d, dtype=P.dtype, device=P.device)

    def posterior(self, x, eps=None):
        loc, raw = self.encode(x)
        scale = torch.nn.functional.softplus(raw + self._shift(raw)).expand_as(loc)
        return _elementwise_posterior(loc, scale, self.bijection, eps)


class FullCovGuide(AmortizedGaussianGuide):
    """Creates ``q(z | x) = N(mu(x), L(x) L(x)^T)``, ``L`` lower-triangular, softplus diagonal."""

    family = "full"

    @classmethod
    def num_scale_params(cls, d):
        return d * (d + 1) // 2

    @classmethod
    def scale_shape(cls, d):
        return (d, d)

    @classmethod
    def tril_from_scale(cls, scale):
        return scale.tril()

    @classmethod
    def tril_from_raw(cls, raw, shift, d):
        rows, cols = torch.tril_indices(d, d, device=raw.device)
        m = raw.new_zeros(raw.shape[:-1] + (d, d))
        m[..., rows, cols] = raw
        diag = torch.nn.functional.softplus(m.diagonal(dim1=-2, dim2=-1) + shift)
        return m.tril(-1) + torch.diag_embed(diag)

    @classmethod
    def raw_from_tril(cls, L, shift):
        d = L.shape[-1]
        L = L.tril(-1) + torch.diag_embed(softplus_inverse(L.diagonal(dim1=-2, dim2=-1)) - shift)
        rows, cols = torch.tril_indices(d, d, device=L.device)
        return L[..., rows, cols]

    @classmethod
    def optimal_covariance(cls, P):
        return torch.cholesky_inverse(torch.linalg.cholesky(P))


def _elementwise_posterior(loc, scale, bijection, eps):
    base = (dist.Normal(torch.zeros_like(loc), 1.0).to_event(1) if eps is None
            else _ProvidedNoise(eps))
    transforms = [AffineTransform(loc, scale, event_dim=1, cache_size=1)]
    if bijection is not None:
        transforms.append(bijection)
    return dist.TransformedDistribution(base, transforms)


def narrow_guide(guide, start: int, length: int):
    """``guide.narrow(start, length)`` for guides that have it (see
    :meth:`AmortizedGaussianGuide.narrow`), any other proposal object as it is."""
    narrow = getattr(guide, "narrow", None)
    return guide if narrow is None else narrow(start, length)


GUIDES = {cls.family: cls for cls in (DiagonalGuide, IsotropicGuide, FullCovGuide)}
"""The guide families by the names the command line and the studies use."""
