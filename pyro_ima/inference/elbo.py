"""Per-datapoint ELBOs and importance log-weights computed from Pyro traces."""

from __future__ import annotations

import pyro
import torch
from pyro import poutine
from pyro.infer import Trace_ELBO

from .._utils import check_finite_tensor, check_int, generator
from ..models.guides import AmortizedGaussianGuide
from ..models.vae import GaussianVAE, squeezes_replicas

__all__ = ["log_weights", "elbo_per_point", "as_replica_batch", "standard_noise",
           "ReplicaTraceELBO"]


class ReplicaTraceELBO(Trace_ELBO):
    """``Trace_ELBO`` that also keeps each replica's ELBO estimate of the last step.

    ``last_replica_elbo`` (``(R,)``) lets training tell which replica produced a non-finite
    loss, so one replica's fault never rolls back another. The loss and gradients are Pyro's.
    """

    def __init__(self, replicas: int = 1, **kwargs):
        kwargs.setdefault("max_plate_nesting", 2)
        super().__init__(**kwargs)
        self.replicas = replicas
        self.last_replica_elbo = None

    def _per_replica(self, lp: torch.Tensor) -> torch.Tensor:
        """A site's log-density summed over everything but the replica dim (-2): ``(R,)``."""
        if lp.dim() < 2:  # a site outside the replica plate: shared equally
            return lp.sum().expand(self.replicas) / self.replicas
        return lp.sum(-1).reshape(-1, lp.shape[-2]).sum(0).expand(self.replicas)

    def _differentiable_loss_particle(self, model_trace, guide_trace):
        out = super()._differentiable_loss_particle(model_trace, guide_trace)
        with torch.no_grad():
            for tr, sign in ((model_trace, 1.0), (guide_trace, -1.0)):
                for site in tr.nodes.values():
                    if site["type"] == "sample":
                        self._parts.append(sign * self._per_replica(site["log_prob"])
                                           / self.num_particles)
        return out

    def loss_and_grads(self, model, guide, *args, **kwargs):
        self._parts = []
        loss = super().loss_and_grads(model, guide, *args, **kwargs)
        self.last_replica_elbo = torch.stack(self._parts).sum(0)
        return loss


def as_replica_batch(vae: GaussianVAE, x, name: str = "x") -> torch.Tensor:
    """``x`` shaped for ``vae`` (``(R, N, ...)``, its device and dtype), refusing NaN/inf."""
    x = vae.as_replica_batch(x)
    check_finite_tensor(name, x)
    return x


def standard_noise(vae: GaussianVAE, num_particles: int, n: int, seed: int) -> torch.Tensor:
    """Standard normal draws ``(S, R, N, d)`` on the model's device from a private generator."""
    g = generator(seed, vae.device)
    return torch.randn((num_particles, vae.replicas, n, vae.latent_dim), generator=g,
                       device=vae.device, dtype=vae.dtype)


def log_weights(vae: GaussianVAE, guide: AmortizedGaussianGuide, x: torch.Tensor,
                eps: torch.Tensor, *, beta_weighted: bool = False) -> torch.Tensor:
    """``log p(x, z_s) - log q(z_s | x)`` for ``z_s = T(mu + A eps_s)``, shape ``(S, R, B)``.

    Read from Pyro traces of ``guide.guide`` and the model replayed on it, with the *unscaled*
    log-densities (no minibatch scale; ``beta_weighted=True`` keeps the beta weight on ``z``,
    giving the beta-VAE objective instead of the ELBO). ``x`` is ``(R, B, ...)`` (see
    :func:`as_replica_batch`) and ``eps`` ``(S, R, B, d)``.
    """
    key = "log_prob" if beta_weighted else "unscaled_log_prob"
    with pyro.get_param_store().scope(), pyro.plate("particles", eps.shape[0], dim=-3):
        guide_tr = poutine.trace(guide.guide).get_trace(x, eps=eps)
        model_tr = poutine.trace(poutine.replay(vae.model, trace=guide_tr)).get_trace(x)
    total = 0.0
    for tr, sign in ((model_tr, 1.0), (guide_tr, -1.0)):
        tr.compute_log_prob()
        for site in tr.nodes.values():
            if site["type"] == "sample":
                total = total + sign * site[key]
    return total


@squeezes_replicas
def elbo_per_point(vae: GaussianVAE, guide: AmortizedGaussianGuide, x, *,
                   num_particles: int = 1, seed: int = 0, eps: torch.Tensor | None = None,
                   beta_weighted: bool = False, chunk_size: int = 4096,
                   grad: bool = False) -> torch.Tensor:
    """The Monte-Carlo ELBO of every data point, ``(R, N)`` (``(N,)`` for ``replicas=None``).

    ``ELBO(x) ~ 1/S sum_s [log p(x, z_s) - log q(z_s | x)]``, ``z_s ~ q(z | x)``.

    Arguments:
        x: ``(N, ...)`` (shared by every replica) or ``(R, N, ...)``.
        num_particles: ``S``.
        seed: seeds the draws (ignored when ``eps`` is given).
        eps: standard normal draws ``(S, R, N, d)`` to use instead.
        beta_weighted: the beta-VAE objective instead of the ELBO.
        chunk_size: points per chunk (bounds memory).
        grad: keep the autograd graph (default: evaluate under ``torch.no_grad``).
    """
    check_int("num_particles", num_particles)
    check_int("chunk_size", chunk_size)
    x = as_replica_batch(vae, x)
    n = x.shape[1]
    if eps is None:
        eps = standard_noise(vae, num_particles, n, seed)
    out = []
    with torch.set_grad_enabled(grad):
        for start in range(0, n, chunk_size):
            xs = x.narrow(1, start, min(chunk_size, n - start))
            es = eps.narrow(-2, start, xs.shape[1])
            out.append(log_weights(vae, guide, xs, es, beta_weighted=beta_weighted).mean(0))
    return torch.cat(out, dim=-1)
