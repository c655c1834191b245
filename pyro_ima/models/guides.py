"""Amortized Gaussian guides: one base class, three covariance families."""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import pyro.distributions.constraints as pconstraints
import torch
from torch import nn
from torch.distributions import biject_to, constraints, transform_to
from torch.distributions.transforms import AffineTransform, Transform

from .._utils import check_positive
from .vae import GaussianVAE, data_plates, unique_name

__all__ = ["AmortizedGaussianGuide", "DiagonalGuide", "IsotropicGuide", "FullCovGuide",
           "GUIDES", "support_bijection", "TrilAffineTransform"]


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
        return dist.Normal(0.0, 1.0).log_prob(value).sum(-1)


class AmortizedGaussianGuide(nn.Module):
    """Creates ``q(z | x) = T( mu(x) + A(x) eps )``, ``eps ~ N(0, I_d)``, amortized over ``x``.

    ``A(x)`` is what distinguishes the families (diagonal, isotropic, full lower-triangular),
    and ``T`` is the fixed bijection of :func:`support_bijection` onto the prior's support (the
    identity for priors on R^d). For a bounded prior the guide is thus a Gaussian in the
    unconstrained coordinates ``u`` pushed onto the support, and ``log q`` includes
    ``-log|det dT/du|``: an exactly normalized density on the support.

    Arguments:
        model: the :class:`GaussianVAE` this guide serves (prior support, beta, replicas).
        encoder: a network mapping ``x`` to ``d + num_scale_params(d)`` numbers: the mean
            ``mu(x)`` first, then the family's raw scale parameters.
        init_scale: shifts the raw scale parameters so that a raw output of 0 gives this
            standard deviation (default ``None``: ``softplus(0) = 0.69``). In the
            near-deterministic regime ``1 / sqrt(gamma2)`` saves many early epochs. With
            replicas it may be one value per replica (a sequence or tensor of length ``R``).
    """

    family = "base"

    def __init__(self, model: GaussianVAE, encoder: nn.Module, *,
                 init_scale: float | None = None):
        super().__init__()
        if not isinstance(model, GaussianVAE):
            raise TypeError(f"model: expected a GaussianVAE, got {type(model).__name__}")
        object.__setattr__(self, "model", model)  # not a submodule: its params are the model's
        self.encoder = encoder
        self.latent_dim = model.latent_dim
        self.replicas = model.replicas
        enc_rep = getattr(encoder, "replicas", model.replicas)
        if enc_rep != model.replicas:
            raise ValueError(f"encoder: has replicas={enc_rep} but the model has "
                             f"replicas={model.replicas}")
        out = getattr(encoder, "out_features", None)
        if out is not None and out != self.num_outputs(self.latent_dim):
            raise ValueError(f"encoder: expected {self.num_outputs(self.latent_dim)} outputs "
                             f"for a {self.family} guide with d={self.latent_dim}, got {out}")
        self.bijection = support_bijection(model.prior.support)
        self.pyro_name = unique_name("guide")
        self._loc_override = None
        self._raw_shift = self._shift_from(init_scale)

    def _shift_from(self, init_scale):
        if init_scale is None:
            return 0.0
        if torch.as_tensor(init_scale).dim() == 0:
            init_scale = float(init_scale)
            check_positive("init_scale", init_scale)
            scale = torch.tensor(float(init_scale))
            return float(scale + torch.log(-torch.expm1(-scale)))
        scale = torch.as_tensor(init_scale, dtype=torch.get_default_dtype()).flatten()
        if self.replicas is None or scale.numel() != self.replicas:
            raise ValueError(f"init_scale: expected a number or one value per replica "
                             f"({self.replicas} replicas), got {tuple(scale.shape)} values")
        if not bool((torch.isfinite(scale) & (scale > 0)).all()):
            raise ValueError("init_scale: expected positive finite values")
        return scale + torch.log(-torch.expm1(-scale))  # (R,): aligned to the replica dim

    def _shift(self, t: torch.Tensor):
        """The raw shift, broadcastable against ``t`` whose leading dim is the replica dim."""
        s = self._raw_shift
        return s if isinstance(s, float) else s.reshape((-1,) + (1,) * (t.dim() - 1)).to(t)

    # -- family interface -------------------------------------------------------------------
    @classmethod
    def num_scale_params(cls, d: int) -> int:
        raise NotImplementedError

    @classmethod
    def num_outputs(cls, d: int) -> int:
        """How many outputs the encoder needs for latent size ``d``."""
        return d + cls.num_scale_params(d)

    def _affine(self, loc: torch.Tensor, raw: torch.Tensor) -> Transform:
        raise NotImplementedError

    def scale_tril(self, x: torch.Tensor) -> torch.Tensor:
        """The Cholesky factor ``A(x)`` of the unconstrained covariance, ``(*, d, d)``."""
        raise NotImplementedError

    def raw_from_scale_tril(self, L: torch.Tensor) -> torch.Tensor:
        """Raw scale parameters that give the Cholesky factor ``L`` (of this family's form)."""
        raise NotImplementedError

    def raw_from_covariance(self, cov: torch.Tensor) -> torch.Tensor:
        """Raw scale parameters whose covariance is the family's KL(q||p)-optimal fit to a
        Gaussian posterior with covariance ``cov`` ``(*, d, d)``: ``1 / (cov^-1)_kk`` on the
        diagonal (diagonal family), ``d / tr(cov^-1)`` (isotropic), ``cov`` itself (full)."""
        raise NotImplementedError

    def _inv_scale(self, scale: torch.Tensor) -> torch.Tensor:
        return scale + torch.log(-torch.expm1(-scale)) - self._shift(scale)

    # -- shared -----------------------------------------------------------------------------
    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(mu(x), raw scale parameters)`` in the unconstrained coordinates."""
        h = self.encoder(x)
        loc, raw = h[..., : self.latent_dim], h[..., self.latent_dim:]
        if self._loc_override is not None:
            loc = self._loc_override(x)
        return loc, raw

    def loc(self, x: torch.Tensor) -> torch.Tensor:
        """The Gaussian mean ``mu(x)`` in unconstrained coordinates, ``(*, d)``."""
        return self.encode(x)[0]

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
        base = (dist.Normal(torch.zeros_like(loc), 1.0).to_event(1) if eps is None
                else _ProvidedNoise(eps))
        transforms = [self._affine(loc, raw)]
        if self.bijection is not None:
            transforms.append(self.bijection)
        return dist.TransformedDistribution(base, transforms)

    def guide(self, x: torch.Tensor, eps: torch.Tensor | None = None,
              full_size: int | None = None) -> torch.Tensor:
        """The Pyro guide: samples site ``z`` inside the model's plates and beta scale."""
        pyro.module(self.pyro_name, self)
        with data_plates(self.model.batch_size_of(x), self.replicas, full_size):
            with self.model.latent_scale():
                return pyro.sample("z", self.posterior(x, eps))

    def forward(self, *args, **kwargs):
        return self.guide(*args, **kwargs)

    def with_encoder(self, encoder: nn.Module) -> AmortizedGaussianGuide:
        """A guide of the same family, scale shift and model with another ``encoder``."""
        new = type(self)(self.model, encoder)
        new._raw_shift, new._loc_override = self._raw_shift, self._loc_override
        return new

    def fix_loc(self, fn):
        """Replace ``mu(x)`` by ``fn(x)`` (e.g. the true inverse) until ``fix_loc(None)``.

        The paper's warm-up for large gamma: train only the scales while the mean is pinned.
        """
        self._loc_override = fn


class DiagonalGuide(AmortizedGaussianGuide):
    """Creates ``q(z | x) = N(mu(x), diag(sigma^2(x)))``, ``sigma = softplus(raw)`` (the paper)."""

    family = "diagonal"

    @classmethod
    def num_scale_params(cls, d: int) -> int:
        return d

    def _scale(self, raw):
        return transform_to(pconstraints.softplus_positive)(raw + self._shift(raw))

    def _affine(self, loc, raw):
        return AffineTransform(loc, self._scale(raw), event_dim=1, cache_size=1)

    def scale_tril(self, x):
        return torch.diag_embed(self._scale(self.encode(x)[1]))

    def raw_from_covariance(self, cov):
        prec = torch.linalg.inv(cov).diagonal(dim1=-2, dim2=-1)
        return self._inv_scale(prec.rsqrt())

    def raw_from_scale_tril(self, L):
        return self._inv_scale(L.diagonal(dim1=-2, dim2=-1))


class IsotropicGuide(AmortizedGaussianGuide):
    """Creates ``q(z | x) = N(mu(x), sigma^2(x) I)``, one ``sigma = softplus(raw)`` per point."""

    family = "isotropic"

    @classmethod
    def num_scale_params(cls, d: int) -> int:
        return 1

    def _scale(self, raw, loc):
        scale = transform_to(pconstraints.softplus_positive)(raw + self._shift(raw))
        return scale.expand_as(loc)

    def _affine(self, loc, raw):
        return AffineTransform(loc, self._scale(raw, loc), event_dim=1, cache_size=1)

    def scale_tril(self, x):
        loc, raw = self.encode(x)
        return torch.diag_embed(self._scale(raw, loc))

    def raw_from_covariance(self, cov):
        trace = torch.linalg.inv(cov).diagonal(dim1=-2, dim2=-1).sum(-1, keepdim=True)
        return self._inv_scale((cov.shape[-1] / trace).sqrt())

    def raw_from_scale_tril(self, L):
        return self._inv_scale(L.diagonal(dim1=-2, dim2=-1)[..., :1])


class FullCovGuide(AmortizedGaussianGuide):
    """Creates ``q(z | x) = N(mu(x), L(x) L(x)^T)``, ``L`` lower-triangular, softplus diagonal."""

    family = "full"

    @classmethod
    def num_scale_params(cls, d: int) -> int:
        return d * (d + 1) // 2

    def _tril(self, raw):
        d = self.latent_dim
        rows, cols = torch.tril_indices(d, d)
        m = raw.new_zeros(raw.shape[:-1] + (d, d))
        m[..., rows, cols] = raw
        m = m + self._shift(m) * torch.eye(d, dtype=m.dtype)  # shifts the diagonal only
        return transform_to(pconstraints.softplus_lower_cholesky)(m)

    def _affine(self, loc, raw):
        return TrilAffineTransform(loc, self._tril(raw), cache_size=1)

    def scale_tril(self, x):
        return self._tril(self.encode(x)[1])

    def raw_from_covariance(self, cov):
        return self.raw_from_scale_tril(torch.linalg.cholesky(cov))

    def raw_from_scale_tril(self, L):
        diag = L.diagonal(dim1=-2, dim2=-1)
        L = L - torch.diag_embed(diag) + torch.diag_embed(self._inv_scale(diag))
        rows, cols = torch.tril_indices(self.latent_dim, self.latent_dim)
        return L[..., rows, cols]


GUIDES = {cls.family: cls for cls in (DiagonalGuide, IsotropicGuide, FullCovGuide)}
