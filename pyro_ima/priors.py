"""Latent priors: torch/Pyro distributions with event shape ``(d,)``, no hand-written densities."""

from __future__ import annotations

import math

import numpy as np
import pyro.distributions as dist
import torch
from torch import nn
from torch.distributions import biject_to, constraints
from torch.distributions.transforms import AffineTransform

from ._utils import check_int, check_positive

__all__ = ["gaussian", "laplace", "logistic", "uniform", "beta", "BoxBeta", "PRIORS",
           "LearnablePrior"]


def _dim(dim):
    check_int("dim", dim)
    return dim


def gaussian(dim: int, scale: float = 1.0) -> dist.Distribution:
    """``N(0, scale^2 I_d)``."""
    check_positive("scale", scale)
    return dist.Normal(torch.zeros(_dim(dim)), torch.full((dim,), float(scale))).to_event(1)


def laplace(dim: int, scale: float = 1.0) -> dist.Distribution:
    """Independent ``Laplace(0, scale)`` coordinates (log-concave, heavier tails)."""
    check_positive("scale", scale)
    return dist.Laplace(torch.zeros(_dim(dim)), torch.full((dim,), float(scale))).to_event(1)


def logistic(dim: int, scale: float = 1.0) -> dist.Distribution:
    """Independent standard logistic coordinates, ``sigmoid(z) ~ U(0, 1)`` (log-concave)."""
    check_positive("scale", scale)
    return dist.Logistic(torch.zeros(_dim(dim)), torch.full((dim,), float(scale))).to_event(1)


def _box(low, high) -> None:
    for name, v in (("low", low), ("high", high)):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise ValueError(f"{name}: expected a finite number, got {v!r}")
    if not float(high) > float(low):
        raise ValueError(f"high: expected high > low, got low={low}, high={high}")


def uniform(dim: int, low: float = 0.0, high: float = 1.0) -> dist.Distribution:
    """Uniform on the box ``[low, high]^d`` (finite bounds)."""
    _box(low, high)
    return dist.Uniform(torch.full((_dim(dim),), float(low)),
                        torch.full((dim,), float(high))).to_event(1)


class BoxBeta(dist.TransformedDistribution):
    """``low + (high - low) B`` with ``B ~ Beta(a, b)`` per coordinate, on the box
    ``[low, high]^d``; the density is the Beta's through an affine transform."""

    arg_constraints: dict = {}

    def __init__(self, a: torch.Tensor, b: torch.Tensor, low: float, high: float,
                 validate_args=None):
        self.low, self.high = float(low), float(high)
        base = dist.Beta(a, b).to_event(1)
        super().__init__(base, AffineTransform(self.low, self.high - self.low, event_dim=1),
                         validate_args=validate_args)

    @constraints.dependent_property(is_discrete=False, event_dim=1)
    def support(self):
        return constraints.independent(constraints.interval(self.low, self.high), 1)

    @property
    def mean(self):
        return self.low + (self.high - self.low) * self.base_dist.mean

    def expand(self, batch_shape, _instance=None):
        # pyro.sample expands a prior to its plates' shape
        beta = self.base_dist.base_dist
        shape = torch.Size(batch_shape) + self.event_shape
        return BoxBeta(beta.concentration1.expand(shape), beta.concentration0.expand(shape),
                       self.low, self.high, validate_args=self._validate_args)


def beta(dim: int, a=2.0, b=2.0, low: float = 0.0, high: float = 1.0) -> dist.Distribution:
    """Independent ``Beta(a_k, b_k)`` coordinates on ``[low, high]`` (a, b scalars or ``(d,)``)."""
    a = torch.as_tensor(a, dtype=torch.get_default_dtype()).expand(_dim(dim)).clone()
    b = torch.as_tensor(b, dtype=torch.get_default_dtype()).expand(dim).clone()
    check_positive("a", a)
    check_positive("b", b)
    _box(low, high)
    if low == 0.0 and high == 1.0:
        return dist.Beta(a, b).to_event(1)
    return BoxBeta(a, b, low, high)


PRIORS = {"gaussian": gaussian, "laplace": laplace, "logistic": logistic, "uniform": uniform,
          "beta": beta}


def _coordinates(prior: dist.Distribution):
    """``(base, box)``: the univariate distribution of batch shape ``(d,)`` behind a prior of
    independent coordinates, and a :class:`BoxBeta`'s ``(low, high)`` (``None`` otherwise)."""
    if isinstance(prior, BoxBeta):
        return prior.base_dist.base_dist, (prior.low, prior.high)
    if isinstance(prior, torch.distributions.Independent) \
            and prior.reinterpreted_batch_ndims == 1 and len(prior.base_dist.batch_shape) == 1:
        return prior.base_dist, None
    shape = tuple(getattr(prior, "base_dist", prior).batch_shape) + tuple(prior.event_shape)
    raise ValueError("prior: learn_prior needs a prior of independent coordinates (a "
                     "univariate distribution of batch shape (d,) .to_event(1), or BoxBeta), "
                     f"got a {type(prior).__name__} of shape {shape}")


def check_floor(name: str, floor) -> float | None:
    """``floor`` as a float (a finite number >= 0), or ``None``; refused naming ``name``."""
    if floor is None:
        return None
    if isinstance(floor, torch.Tensor) and floor.dim() == 0:
        floor = floor.item()
    if isinstance(floor, (bool, np.bool_)) or not isinstance(floor, (int, float, np.number)):
        raise TypeError(f"{name}: expected a number or None, got {floor!r}")
    if not (math.isfinite(floor) and floor >= 0):
        raise ValueError(f"{name}: expected a finite number >= 0, got {floor!r}")
    return float(floor)


def check_learned_prior(learn_prior, prior_floor) -> float | None:
    """Checks a model's ``learn_prior`` / ``prior_floor`` pair (a VAE's arguments, a study's
    config fields); returns the floor as a float or ``None``."""
    if not isinstance(learn_prior, bool):
        raise TypeError(f"learn_prior: expected True or False, got {learn_prior!r}")
    prior_floor = check_floor("prior_floor", prior_floor)
    if prior_floor is not None and not learn_prior:
        raise ValueError("prior_floor: bounds a learned prior's parameters; pass it with "
                         "learn_prior=True")
    return prior_floor


class LearnablePrior(nn.Module):
    """The parameters of a prior of independent coordinates, learned per replica.

    Every parameter of the coordinates' family (``arg_constraints``: a Normal's or Laplace's
    ``loc`` and ``scale``, a Beta's two concentrations) becomes an unconstrained
    ``nn.Parameter`` of shape ``(R, 1, d)`` through the constraint's bijection
    (``torch.distributions.biject_to``), starting at ``prior``'s values, so a prior with a
    positive scale keeps it positive. Calling the module gives the prior with batch shape
    ``(R, 1)`` (one per replica, broadcast over the data plate). Families whose support depends
    on their parameters (a uniform's bounds) are refused: the data could fall outside it.
    The official code's ``fix_prior: false`` learns a Beta prior's ``(a, b)`` as ``|t| + 2``
    of an output ``t``: ``floor=2`` keeps them in the same range (as ``2 + exp(raw)``, so
    the optimizer moves them in log space, not linearly as ``|t|``).

    Arguments:
        prior: the starting prior (independent coordinates, or a :class:`BoxBeta`).
        replicas: ``R``.
        floor: keep the family's positive parameters (scales, concentrations) at or above
            this value: ``floor + exp(raw)`` (``greater_than(floor)`` in place of
            ``positive``; a value can round to the floor itself); ``None``: above 0. The
            starting values must lie above it. Saved in the ``state_dict`` (loading a state
            saved with another floor is refused; a state without it, saved before the floor
            was saved, loads as one without a floor).
        floor_name: the argument name error messages give for ``floor``.
    """

    def __init__(self, prior: dist.Distribution, replicas: int, floor: float | None = None, *,
                 floor_name: str = "floor"):
        super().__init__()
        self.floor, self._floor_name = check_floor(floor_name, floor), floor_name
        base, self._box = _coordinates(prior)
        self.replicas = replicas  # its parameters have a leading replica dim (models.subset)
        self._family = type(base)
        self._constraints = {}
        if constraints.is_dependent(getattr(self._family, "support", None)):
            raise ValueError(f"prior: cannot learn a {self._family.__name__} prior: its "
                             "parameters set its support (choose a family with a fixed "
                             "support, e.g. priors.beta)")
        d = base.batch_shape[0]
        for name, c in base.arg_constraints.items():
            start = getattr(base, name).detach().expand(d)
            if self.floor is not None and c is constraints.positive:
                if not bool((start > self.floor).all()):
                    raise ValueError(f"{floor_name}: the prior's {name} must start above the "
                                     f"floor {self.floor:g}, got a minimum of "
                                     f"{float(start.min()):g}")
                c = constraints.greater_than(self.floor)
            raw = biject_to(c).inv(start)
            self.register_parameter(f"raw_{name}",
                                    nn.Parameter(raw.expand(replicas, 1, d).clone()))
            self._constraints[name] = c

    def get_extra_state(self) -> dict:
        # the floor sets what the raw parameters mean (floor + exp(raw)): saved with them
        return {"floor": self.floor}

    def set_extra_state(self, state: dict) -> None:
        saved = state.get("floor") if isinstance(state, dict) else None
        if saved != self.floor:
            was = "without a floor" if saved is None else f"with floor {saved}"
            raise ValueError(f"{self._floor_name}: the state was saved {was}, this prior has "
                             f"{self.floor}: its raw parameters would mean other values")

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # a state without the extra state was saved before the floor was saved with it
        # (6ee6cfd), so, but for states of the eleven minutes after floors came in (904ed4b),
        # without a floor; also with strict=False, a floored prior refuses it
        key = prefix + "_extra_state"
        if key not in state_dict and any(k.startswith(prefix + "raw_") for k in state_dict):
            state_dict[key] = {"floor": None}
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def _prior(self, values: dict[str, torch.Tensor]) -> dist.Distribution:
        # biject_to keeps every value inside its constraint, so no argument validation
        base = self._family(**values, validate_args=False)
        if self._box is not None:
            return BoxBeta(base.concentration1, base.concentration0, *self._box,
                           validate_args=False)
        return dist.Independent(base, 1, validate_args=False)

    def forward(self) -> dist.Distribution:
        """The prior of every replica (batch shape ``(R, 1)``), differentiable in the
        parameters."""
        return self._prior({name: biject_to(c)(getattr(self, f"raw_{name}"))
                            for name, c in self._constraints.items()})

    def values(self) -> dict[str, torch.Tensor]:
        """The learned parameters in their own (constrained) form, ``(R, d)`` each, keyed by
        the family's argument names (a Beta's ``a`` is ``concentration1``, ``b``
        ``concentration0``)."""
        with torch.no_grad():
            return {name: biject_to(c)(getattr(self, f"raw_{name}")).squeeze(1).detach()
                    for name, c in self._constraints.items()}

    def replica(self, r: int) -> dist.Distribution:
        """Replica ``r``'s prior as a plain one (batch shape ``()``, event ``(d,)``, detached):
        what ``data.make_dataset`` or ``exact_log_px`` on ``(N, D)`` data take."""
        return self._prior({name: v[r] for name, v in self.values().items()})
