"""The generative side: a Gaussian VAE written as a Pyro model."""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Callable

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from torch import nn

from .._utils import check_int, check_positive

__all__ = ["GaussianVAE", "data_plates"]

_names = itertools.count()


def unique_name(prefix: str) -> str:
    """A process-unique name for ``pyro.module``, so no two objects share param-store keys."""
    return f"{prefix}{next(_names)}"


@contextlib.contextmanager
def data_plates(batch_size: int, replicas: int | None, full_size: int | None = None):
    """Enters the plates shared by model and guide.

    ``replicas`` (dim -2, only with replicas) and ``data`` (dim -1). With ``full_size`` the data
    plate is a minibatch of ``batch_size`` out of ``full_size`` points, and every log-density
    inside it is scaled by ``full_size / batch_size`` (the minibatch estimate of the full sum).
    """
    scale = 1.0 if full_size is None else full_size / batch_size
    with contextlib.ExitStack() as stack:
        if replicas is not None:
            stack.enter_context(pyro.plate("replicas", replicas, dim=-2))
        stack.enter_context(pyro.plate("data", batch_size, dim=-1))
        if scale != 1.0:
            stack.enter_context(poutine.scale(scale=scale))
        yield


def _per_replica(name: str, value, replicas: int | None, trailing: int) -> torch.Tensor:
    """``value`` as a float tensor: a scalar, or ``(R,) + (1,) * trailing`` per replica."""
    t = torch.as_tensor(value, dtype=torch.get_default_dtype())
    check_positive(name, t) if t.dim() else check_positive(name, float(t))
    if t.dim() == 0:
        return t
    if replicas is None or t.shape != (replicas,):
        raise ValueError(f"{name}: expected a number or a tensor of shape ({replicas},) "
                         f"(one per replica), got shape {tuple(t.shape)}")
    return t.reshape((replicas,) + (1,) * trailing)


class GaussianVAE(nn.Module):
    """Creates the model ``z ~ p0``, ``x | z ~ N(f(z), gamma^-2 diag(tau^2))``.

    With ``learn_noise=False``, ``tau = 1`` (isotropic noise of precision ``gamma2``). With
    ``learn_noise=True``, ``tau = exp(s - mean(s))`` has learnable ``s`` and unit geometric mean,
    so ``gamma2`` alone sets the noise level and ``tau`` its shape across dimensions. ``beta``
    weights the latent site (a beta-VAE) in both model and guide.

    Arguments:
        decoder: the mean ``f``, an ``nn.Module`` or any callable on ``(*, d)``.
        prior: the latent prior ``p0``, a distribution with event shape ``(d,)``.
        gamma2: observation precision: a number, or a ``(R,)`` tensor with replicas.
        learn_noise: learn per-dimension relative scales ``tau``.
        data_dim: the observation size ``D`` (needed with ``learn_noise``).
        beta: weight on the latent site: a number, or a ``(R,)`` tensor with replicas.
        fixed_decoder: keep the decoder's parameters out of training (a ground-truth mixing).
            Callables that are not modules are always fixed.
        replicas: ``None``, or ``R`` independent models batched along a leading dim.
        obs_event_dim: how many trailing dims of ``x`` form one observation (1 for vectors,
            3 for images).
    """

    def __init__(self, decoder: Callable[[torch.Tensor], torch.Tensor],
                 prior: dist.Distribution, gamma2, *, learn_noise: bool = False,
                 data_dim: int | None = None, beta=1.0, fixed_decoder: bool = False,
                 replicas: int | None = None, obs_event_dim: int = 1):
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
        if replicas is not None:
            check_int("replicas", replicas)
        check_int("obs_event_dim", obs_event_dim)
        self.replicas = replicas
        self.prior = prior
        self.latent_dim = int(prior.event_shape[0])
        self.obs_event_dim = obs_event_dim
        trainable = isinstance(decoder, nn.Module) and not fixed_decoder
        if trainable:
            self.decoder = decoder
        else:  # keep a fixed decoder out of this module's parameters
            object.__setattr__(self, "decoder", decoder)
        self.decoder_trainable = trainable
        self.register_buffer("gamma2", _per_replica("gamma2", gamma2, replicas, 1 + obs_event_dim))
        self.register_buffer("beta", _per_replica("beta", beta, replicas, 1))
        self.learn_noise = learn_noise
        if learn_noise:
            if data_dim is None or obs_event_dim != 1:
                raise ValueError("data_dim: learn_noise needs vector data and its size data_dim")
            check_int("data_dim", data_dim)
            shape = (data_dim,) if replicas is None else (replicas, 1, data_dim)
            self.log_tau = nn.Parameter(torch.zeros(shape))
        self.data_dim = data_dim
        self.pyro_name = unique_name("vae")

    # -- observation noise ------------------------------------------------------------------
    def tau(self) -> torch.Tensor | None:
        """Relative noise scales with unit geometric mean, ``(D,)`` or ``(R, 1, D)``."""
        if not self.learn_noise:
            return None
        return torch.exp(self.log_tau - self.log_tau.mean(-1, keepdim=True))

    def obs_scale(self) -> torch.Tensor:
        """The observation noise std ``tau / gamma``, broadcastable against ``f(z)``."""
        scale = self.gamma2.rsqrt()
        if self.learn_noise:
            scale = scale * self.tau()
        return scale

    def likelihood(self, z: torch.Tensor) -> dist.Distribution:
        """``p(x | z)`` as a distribution whose event is one observation."""
        return dist.Normal(self.decoder(z), self.obs_scale()).to_event(self.obs_event_dim)

    # -- Pyro -------------------------------------------------------------------------------
    def batch_size_of(self, x: torch.Tensor) -> int:
        """The number of data points in ``x`` (its plate dim)."""
        expected = self.obs_event_dim + (1 if self.replicas is None else 2)
        if x.dim() != expected:
            shape = "(B, ...)" if self.replicas is None else f"({self.replicas}, B, ...)"
            raise ValueError(f"x: expected {expected} dims {shape} with {self.obs_event_dim} "
                             f"event dim(s), got shape {tuple(x.shape)}")
        if self.replicas is not None and x.shape[0] != self.replicas:
            raise ValueError(f"x: expected leading replica dim {self.replicas}, "
                             f"got shape {tuple(x.shape)}")
        return x.shape[-1 - self.obs_event_dim]

    def check_data(self, x: torch.Tensor) -> None:
        """Raise ``ValueError`` unless the decoder maps this prior's latents to ``x``'s shape."""
        rep = () if self.replicas is None else (self.replicas,)
        z = torch.zeros(rep + (1, self.latent_dim))
        try:
            with torch.no_grad():
                out = self.decoder(z)
        except (RuntimeError, ValueError, IndexError) as e:
            raise ValueError(f"decoder: cannot map latents of the prior's size d = "
                             f"{self.latent_dim} ({e})") from None
        want = tuple(x.shape[x.dim() - self.obs_event_dim:])
        got = tuple(out.shape[out.dim() - self.obs_event_dim:])
        if want != got:
            raise ValueError(f"decoder: outputs observations of shape {got}, but the data "
                             f"has shape {want} per point")

    def latent_scale(self):
        """The ``poutine.scale`` context for the latent site (beta), shared with guides."""
        if self.beta.dim() == 0 and float(self.beta) == 1.0:
            return contextlib.nullcontext()
        return poutine.scale(scale=self.beta)

    def model(self, x: torch.Tensor, eps: torch.Tensor | None = None,
              full_size: int | None = None) -> torch.Tensor:
        """The Pyro model. ``x``: ``(B, D)`` or ``(R, B, D)``; ``eps`` is for the guide only."""
        pyro.module(self.pyro_name, self)
        with data_plates(self.batch_size_of(x), self.replicas, full_size):
            with self.latent_scale():
                z = pyro.sample("z", self.prior)
            pyro.sample("x", self.likelihood(z), obs=x)
        return z

    def forward(self, *args, **kwargs):
        return self.model(*args, **kwargs)
