"""The generative side: a Gaussian VAE written as a Pyro model, always with a replica axis."""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import itertools
from collections.abc import Callable

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from torch import nn
from torch.distributions import constraints

from .._utils import as_tensor_on, check_int, check_positive, map_tensors, replica_count, to_like
from ..priors import LearnablePrior, check_learned_prior

__all__ = ["VAE", "GaussianVAE", "BernoulliVAE", "data_plates", "unique_name",
           "squeezes_replicas"]

_names = itertools.count()


def unique_name(prefix: str) -> str:
    """A process-unique name for ``pyro.module``, so no two objects share param-store keys."""
    return f"{prefix}{next(_names)}"


@contextlib.contextmanager
def data_plates(batch_size: int, replicas: int, full_size: int | None = None,
                device: torch.device | None = None):
    """Enters the plates shared by model and guide: ``replicas`` (dim -2) and ``data`` (dim -1).

    With ``full_size`` the data plate is a minibatch of ``batch_size`` out of ``full_size``
    points, and every log-density inside it is scaled by ``full_size / batch_size`` (the
    minibatch estimate of the full sum).
    """
    scaled = full_size is not None and full_size != batch_size
    with pyro.plate("replicas", replicas, dim=-2, device=device), \
            pyro.plate("data", batch_size, dim=-1, device=device), \
            (poutine.scale(scale=full_size / batch_size) if scaled else contextlib.nullcontext()):
        yield


def _per_replica(name: str, value, replicas: int, like: dict) -> torch.Tensor:
    """``value`` as a ``(R,)`` tensor: one number for every replica, or one per replica."""
    if isinstance(value, bool) or (torch.is_tensor(value) and value.dtype == torch.bool):
        raise TypeError(f"{name}: expected a positive number, got a bool")
    t = torch.as_tensor(value, dtype=like.get("dtype", torch.get_default_dtype()),
                        device=like.get("device"))
    if t.dim() == 0:
        check_positive(name, float(t))
        return t.expand(replicas).clone()
    check_positive(name, t)
    if t.shape != (replicas,):
        raise ValueError(f"{name}: expected a number or a tensor of shape ({replicas},) "
                         f"(one per replica), got shape {tuple(t.shape)}")
    return t.clone()


def _map_results(obj, fn):
    if torch.is_tensor(obj):
        return fn(obj)
    if isinstance(obj, dict):
        return {k: _map_results(v, fn) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_map_results(v, fn) for v in obj)
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return dataclasses.replace(obj, **{f.name: _map_results(getattr(obj, f.name), fn)
                                           for f in dataclasses.fields(obj)})
    return obj


def squeezes_replicas(fn):
    """Decorates a public estimator ``fn(vae, ...)`` whose results carry the replica axis
    ``(R, ...)``: the decorated function squeezes it for models built with ``replicas=None``;
    ``fn.batched`` is the undecorated function, for the library's own use."""
    @functools.wraps(fn)
    def public(vae, *args, **kwargs):
        return vae.unbatch(fn(vae, *args, **kwargs))
    public.batched = fn
    return public


class VAE(nn.Module):
    """The model ``z ~ p0``, ``x | z ~ p(x | f(z))``: what every observation family shares.

    Every model has a replica axis of size ``R`` (``replicas``, default one): ``R`` independent
    models batched along a leading dim, in a ``"replicas"`` plate at dim -2 outside the
    ``"data"`` plate at dim -1. ``replicas=None`` means one replica whose axis the public
    estimators squeeze from their results (:meth:`unbatch`). ``beta`` weights the latent site
    (a beta-VAE) in both model and guide. Subclasses give the observation model
    (:meth:`likelihood`): :class:`GaussianVAE`, :class:`BernoulliVAE`.

    Device and dtype follow the module: ``vae.to(device, dtype)`` (or ``.double()``) moves the
    parameters, buffers, the prior and a fixed ground-truth decoder together. At construction
    they follow a trainable decoder's parameters (else PyTorch's defaults).

    Arguments:
        decoder: ``f``, an ``nn.Module`` or any callable on ``(*, d)``.
        prior: the latent prior ``p0``, a distribution with event shape ``(d,)``.
        beta: weight on the latent site: a number, or a ``(R,)`` tensor.
        fixed_decoder: keep the decoder's parameters out of training (a ground-truth mixing).
            Callables that are not modules are always fixed.
        replicas: ``R``, or ``None`` for one replica squeezed on return.
        obs_event_dim: how many trailing dims of ``x`` form one observation (1 for vectors,
            3 for images).
        learn_prior: learn the prior's parameters per replica, starting from ``prior``'s
            (:class:`pyro_ima.priors.LearnablePrior`: independent coordinates of a family with
            a fixed support, e.g. ``priors.beta``, ``priors.gaussian``); ``vae.prior`` then
            has batch shape ``(R, 1)``.
        prior_floor: with ``learn_prior``, keep the prior's positive parameters (scales,
            concentrations) at or above this value (``LearnablePrior``'s ``floor``; the
            official code keeps a learned Beta's ``(a, b)`` at or above 2); ``None``: above 0.
    """

    def __init__(self, decoder: Callable[[torch.Tensor], torch.Tensor],
                 prior: dist.Distribution, *, beta=1.0, fixed_decoder: bool = False,
                 replicas: int | None = None, obs_event_dim: int = 1,
                 learn_prior: bool = False, prior_floor: float | None = None):
        super().__init__()
        if not callable(decoder):
            raise TypeError("decoder: expected a callable or nn.Module, "
                            f"got {type(decoder).__name__}")
        if not isinstance(prior, torch.distributions.Distribution):
            raise TypeError("prior: expected a torch/Pyro Distribution, "
                            f"got {type(prior).__name__}")
        if len(prior.event_shape) != 1:
            raise ValueError(f"prior: expected event shape (d,), got {tuple(prior.event_shape)}; "
                             "use .to_event(1) on a batch of univariate distributions")
        check_int("obs_event_dim", obs_event_dim)
        prior_floor = check_learned_prior(learn_prior, prior_floor)
        R = replica_count(replicas)
        decoder_replicas = getattr(decoder, "replicas", None)
        if decoder_replicas is not None and decoder_replicas != R:
            raise ValueError(f"decoder: has {decoder_replicas} replicas but the model has {R} "
                             f"(pass replicas={decoder_replicas} to the model)")
        self.replicas, self.squeeze = R, replicas is None
        self.latent_dim = int(prior.event_shape[0])
        self.obs_event_dim = obs_event_dim
        trainable = isinstance(decoder, nn.Module) and not fixed_decoder
        ref = next(iter(decoder.parameters()), None) if isinstance(decoder, nn.Module) else None
        self._like = {} if ref is None else {"device": ref.device, "dtype": ref.dtype}
        self.register_buffer("beta", _per_replica("beta", beta, R, self._like))
        self._unit_beta = bool((self.beta == 1).all())
        self.decoder_trainable = trainable
        # plain attributes (not submodules): a fixed module decoder stays out of the
        # parameters, and a trainable one is saved once, as `decoder`
        object.__setattr__(self, "_decoder_source", decoder)
        self._prior_source = prior
        if trainable:
            self.decoder = decoder
        else:  # keep a fixed decoder out of this module's parameters
            object.__setattr__(self, "decoder", decoder)
        self._follow_buffers()
        # after the buffers: starts from the prior on the model's device and dtype
        self.learned_prior = (LearnablePrior(self._fixed_prior, R, floor=prior_floor,
                                             floor_name="prior_floor")
                              if learn_prior else None)
        self.pyro_name = unique_name("vae")

    def set_beta(self, beta) -> None:
        """Sets ``beta`` (a positive number or an ``(R,)`` tensor) in place, e.g. for a KL
        warm-up; the latent site's scale follows."""
        self.beta.copy_(_per_replica("beta", beta, self.replicas,
                                     {"device": self.beta.device, "dtype": self.beta.dtype}))
        self._unit_beta = bool((self.beta == 1).all())

    # -- device and dtype ------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return self.beta.device

    @property
    def dtype(self) -> torch.dtype:
        return self.beta.dtype

    def _follow_buffers(self) -> None:
        """Rebuild the prior (and a fixed non-module decoder) on the buffers' device and dtype,
        from the objects given at construction (so float64 given stays exact through float32
        and back)."""
        fn = to_like(self.beta)
        self._fixed_prior = map_tensors(self._prior_source, fn)
        self._support = self._fixed_prior.support  # one object, so guides can cache on it
        if isinstance(self.decoder, nn.Module):
            if not self.decoder_trainable:
                self.decoder._apply(fn)
        else:
            object.__setattr__(self, "decoder", map_tensors(self._decoder_source, fn))

    def _apply(self, fn, recurse=True):
        super()._apply(fn, recurse)
        self._follow_buffers()
        return self

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # states saved before the decoder was kept out of the submodules (2026-12-02) hold it a
        # second time as `_decoder_source`: the same tensors as `decoder`, or a fixed
        # decoder's, which is never loaded
        for key in [k for k in state_dict if k.startswith(prefix + "_decoder_source.")]:
            del state_dict[key]
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    @property
    def prior(self) -> dist.Distribution:
        """The latent prior: the one given (on the model's device and dtype), or with
        ``learn_prior`` the learned one (batch shape ``(R, 1)``)."""
        if self.learned_prior is not None:
            return self.learned_prior()
        return self._fixed_prior

    @prior.setter
    def prior(self, value) -> None:
        raise AttributeError("prior: set at construction (GaussianVAE(decoder, prior, ...)); "
                             "learn_prior=True learns its parameters")

    def replica_prior(self, r: int = 0) -> dist.Distribution:
        """Replica ``r``'s prior with batch shape ``()``: the given one, or replica ``r``'s
        learned one (detached)."""
        if self.learned_prior is not None:
            return self.learned_prior.replica(r)
        return self._fixed_prior

    @property
    def prior_support(self) -> constraints.Constraint:
        """The prior's support (fixed: a learned prior keeps the given one's)."""
        return self._support

    # -- the observation model ----------------------------------------------------------------
    def likelihood(self, z: torch.Tensor) -> dist.Distribution:
        """``p(x | z)`` as a distribution whose event is one observation."""
        raise NotImplementedError

    # -- data -------------------------------------------------------------------------------
    def as_replica_batch(self, x) -> torch.Tensor:
        """``x`` as ``(R, N, *event)`` on the model's device and dtype.

        Accepts one dataset for every replica ``(N, *event)`` (expanded, not copied) or one per
        replica ``(R, N, *event)``; anything else is refused naming ``x``.
        """
        try:
            x = as_tensor_on(x, self.device, self.dtype)
        except (TypeError, ValueError, RuntimeError):
            raise TypeError(f"x: expected a tensor or array, got {type(x).__name__}") from None
        if not x.is_floating_point():
            x = x.to(self.dtype)
        if x.dim() == self.obs_event_dim + 1:
            x = x.expand((self.replicas,) + x.shape)
        if self.batch_size_of(x) == 0:
            raise ValueError("x: expected at least one data point, got none")
        return x

    def batch_size_of(self, x: torch.Tensor) -> int:
        """The number of data points in a replica batch ``x`` ``(R, B, *event)``."""
        expected = self.obs_event_dim + 2
        if x.dim() != expected or x.shape[0] != self.replicas:
            raise ValueError(f"x: expected ({self.replicas}, B, ...) or (B, ...) with "
                             f"{self.obs_event_dim} event dim(s), got shape {tuple(x.shape)}"
                             + ("" if self.obs_event_dim != 1 or x.dim() <= 3 else
                                " (images need obs_event_dim=3 on the model)"))
        return x.shape[1]

    def check_data(self, x: torch.Tensor) -> None:
        """Raise ``ValueError`` unless the decoder maps this prior's latents to ``x``'s shape."""
        z = torch.zeros((self.replicas, 1, self.latent_dim), device=self.device,
                        dtype=self.dtype)
        try:
            with torch.no_grad():
                out = self.decoder(z)
        except (RuntimeError, ValueError, IndexError) as e:
            raise ValueError(f"decoder: cannot map latents of the prior's size d = "
                             f"{self.latent_dim} ({str(e).splitlines()[0][:120]})") from None
        want = tuple(x.shape[x.dim() - self.obs_event_dim:])
        got = tuple(out.shape[out.dim() - self.obs_event_dim:])
        if want != got:
            raise ValueError(f"decoder: outputs observations of shape {got}, but the data "
                             f"has shape {want} per point")

    def unbatch(self, result):
        """Squeeze the replica axis (dim 0) of every tensor in ``result`` (a tensor, a dict, a
        tuple or list, or a dataclass of them) for a model built with ``replicas=None``."""
        if not self.squeeze:
            return result
        return _map_results(result, lambda t: t.squeeze(0) if t.dim() else t)

    # -- Pyro -------------------------------------------------------------------------------
    def latent_scale(self):
        """The ``poutine.scale`` context for the latent site (beta), shared with guides."""
        if self._unit_beta:
            return contextlib.nullcontext()
        return poutine.scale(scale=self.beta.unsqueeze(-1))

    def plates(self, x: torch.Tensor, full_size: int | None = None):
        """:func:`data_plates` for a replica batch ``x``."""
        return data_plates(self.batch_size_of(x), self.replicas, full_size, self.device)

    def model(self, x: torch.Tensor, eps: torch.Tensor | None = None,
              full_size: int | None = None) -> torch.Tensor:
        """The Pyro model. ``x``: ``(B, ...)`` or ``(R, B, ...)``; ``eps`` is for the guide."""
        pyro.module(self.pyro_name, self)
        x = self.as_replica_batch(x)
        with self.plates(x, full_size):
            with self.latent_scale():
                z = pyro.sample("z", self.prior)
            pyro.sample("x", self.likelihood(z), obs=x)
        return z

    def forward(self, *args, **kwargs):
        return self.model(*args, **kwargs)


class GaussianVAE(VAE):
    """Creates the model ``z ~ p0``, ``x | z ~ N(f(z), gamma^-2 diag(tau^2))``.

    With ``learn_noise=False``, ``tau = 1`` (isotropic noise of precision ``gamma2``). With
    ``learn_noise=True``, ``tau = exp(s - mean(s))`` has learnable ``s`` and unit geometric mean,
    so ``gamma2`` alone sets the noise level and ``tau`` its shape across dimensions. This is the
    model the paper's theory is about: the Laplace proposal, ELBO* refinement and the gap
    predictions (``inference.gap``) need its decoder mean and observation scale.

    Arguments (beyond :class:`VAE`'s):
        gamma2: observation precision: a number, or a ``(R,)`` tensor (one per replica).
        learn_noise: learn per-dimension relative scales ``tau``.
        data_dim: the observation size ``D`` (needed with ``learn_noise``).
    """

    def __init__(self, decoder: Callable[[torch.Tensor], torch.Tensor],
                 prior: dist.Distribution, gamma2=1.0, *, learn_noise: bool = False,
                 data_dim: int | None = None, beta=1.0, fixed_decoder: bool = False,
                 replicas: int | None = None, obs_event_dim: int = 1,
                 learn_prior: bool = False, prior_floor: float | None = None):
        super().__init__(decoder, prior, beta=beta, fixed_decoder=fixed_decoder,
                         replicas=replicas, obs_event_dim=obs_event_dim,
                         learn_prior=learn_prior, prior_floor=prior_floor)
        self.register_buffer("gamma2", _per_replica("gamma2", gamma2, self.replicas,
                                                    self._like))
        self.learn_noise = learn_noise
        if learn_noise:
            if data_dim is None or obs_event_dim != 1:
                raise ValueError("data_dim: learn_noise needs vector data and its size data_dim")
            check_int("data_dim", data_dim)
            self.log_tau = nn.Parameter(torch.zeros((self.replicas, 1, data_dim), **self._like))
        self.data_dim = data_dim

    def tau(self) -> torch.Tensor | None:
        """Relative noise scales with unit geometric mean, ``(R, 1, D)`` (``None`` if fixed)."""
        if not self.learn_noise:
            return None
        return torch.exp(self.log_tau - self.log_tau.mean(-1, keepdim=True))

    def obs_scale(self) -> torch.Tensor:
        """The observation noise std ``tau / gamma``, ``(R, 1, *event ones)`` or ``(R, 1, D)``."""
        scale = self.gamma2.rsqrt().reshape((self.replicas, 1) + (1,) * self.obs_event_dim)
        return scale * self.tau() if self.learn_noise else scale

    def likelihood(self, z: torch.Tensor) -> dist.Distribution:
        return dist.Normal(self.decoder(z), self.obs_scale()).to_event(self.obs_event_dim)


class BernoulliVAE(VAE):
    """Creates the model ``z ~ p0``, ``x | z ~ Bernoulli(sigmoid(f(z)))`` per coordinate.

    For binary data (binarized images, as in Pyro's VAE example): the decoder outputs logits.
    Training and the trace-based estimators (per-point ELBO, IWAE ``log p(x)`` with PSIS k-hat)
    work as for :class:`GaussianVAE`; the Gaussian-specific layer (Laplace proposal, ELBO*, gap
    predictions) does not apply.
    """

    def likelihood(self, z: torch.Tensor) -> dist.Distribution:
        return dist.Bernoulli(logits=self.decoder(z)).to_event(self.obs_event_dim)
