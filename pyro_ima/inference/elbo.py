"""Per-datapoint ELBOs and importance log-weights computed from Pyro traces."""

from __future__ import annotations

import pyro
import torch
from pyro import poutine
from pyro.infer import Trace_ELBO

from .._utils import check_finite_tensor, check_int
from ..models.guides import AmortizedGaussianGuide
from ..models.vae import GaussianVAE

__all__ = ["log_weights", "elbo_per_point", "as_replica_batch", "standard_noise",
           "ReplicaTraceELBO"]


class ReplicaTraceELBO(Trace_ELBO):
    """``Trace_ELBO`` that also keeps each replica's ELBO estimate of the last step.

    ``last_replica_elbo`` (``(R,)``, or a 0-dim tensor without replicas) lets training tell
    which replica produced a non-finite loss, so one replica's fault never rolls back another.
    The loss and gradients are Pyro's own.
    """

    def __init__(self, replicas: int | None = None, **kwargs):
        super().__init__(**kwargs)
        self.replicas = replicas
        self.last_replica_elbo = None

    def _per_replica(self, lp: torch.Tensor) -> torch.Tensor:
        if self.replicas is None:
            return lp.sum()
        lp = lp.sum(-1) if lp.dim() >= 1 else lp  # over the data plate
        return lp.reshape(-1, lp.shape[-1]).sum(0).expand(self.replicas) if lp.dim() else \
            lp.expand(self.replicas) / self.replicas

    def _differentiable_loss_particle(self, model_trace, guide_trace):
        out = super()._differentiable_loss_particle(model_trace, guide_trace)
        with torch.no_grad():
            for tr, sign in ((model_trace, 1.0), (guide_trace, -1.0)):
                for site in tr.nodes.values():
                    if site["type"] == "sample":
                        self._acc = self._acc + sign * self._per_replica(site["log_prob"]) \
                            / self.num_particles
        return out

    def loss_and_grads(self, model, guide, *args, **kwargs):
        self._acc = torch.zeros(() if self.replicas is None else (self.replicas,))
        loss = super().loss_and_grads(model, guide, *args, **kwargs)
        self.last_replica_elbo = self._acc
        return loss


def as_replica_batch(vae: GaussianVAE, x: torch.Tensor) -> torch.Tensor:
    """``x`` shaped for ``vae``: a shared ``(N, ...)`` dataset is expanded to ``(R, N, ...)``."""
    check_finite_tensor("x", x)
    if vae.replicas is not None and x.dim() == vae.obs_event_dim + 1:
        x = x.expand((vae.replicas,) + x.shape)
    vae.batch_size_of(x)  # validates the shape
    return x


def standard_noise(vae: GaussianVAE, num_particles: int, n: int, seed: int) -> torch.Tensor:
    """Standard normal draws ``(S, [R,] N, d)`` from a private generator seeded with ``seed``."""
    rep = () if vae.replicas is None else (vae.replicas,)
    g = torch.Generator().manual_seed(seed)
    return torch.randn((num_particles, *rep, n, vae.latent_dim), generator=g)


def log_weights(vae: GaussianVAE, guide: AmortizedGaussianGuide, x: torch.Tensor,
                eps: torch.Tensor, *, beta_weighted: bool = False) -> torch.Tensor:
    """``log p(x, z_s) - log q(z_s | x)`` for ``z_s = T(mu + A eps_s)``, shape ``(S, [R,] B)``.

    Read from Pyro traces of ``guide.guide`` and the model replayed on it, with the *unscaled*
    log-densities (no minibatch scale; ``beta_weighted=True`` keeps the beta weight on ``z``,
    giving the beta-VAE objective instead of the ELBO). ``x`` must already be shaped for the
    model (see :func:`as_replica_batch`); ``eps`` is ``(S, [R,] B, d)``.
    """
    nest = 1 if vae.replicas is None else 2
    key = "log_prob" if beta_weighted else "unscaled_log_prob"
    with pyro.get_param_store().scope(), pyro.plate("particles", eps.shape[0], dim=-nest - 1):
        guide_tr = poutine.trace(guide.guide).get_trace(x, eps=eps)
        model_tr = poutine.trace(poutine.replay(vae.model, trace=guide_tr)).get_trace(x)
    total = 0.0
    for tr, sign in ((model_tr, 1.0), (guide_tr, -1.0)):
        tr.compute_log_prob()
        for site in tr.nodes.values():
            if site["type"] == "sample":
                total = total + sign * site[key]
    return total


def elbo_per_point(vae: GaussianVAE, guide: AmortizedGaussianGuide, x: torch.Tensor, *,
                   num_particles: int = 1, seed: int = 0, eps: torch.Tensor | None = None,
                   beta_weighted: bool = False, chunk_size: int = 4096,
                   grad: bool = False) -> torch.Tensor:
    """The Monte-Carlo ELBO of every data point, ``(N,)`` or ``(R, N)`` with replicas.

    ``ELBO(x) ~ 1/S sum_s [log p(x, z_s) - log q(z_s | x)]``, ``z_s ~ q(z | x)``.

    Arguments:
        x: ``(N, D)``, or ``(R, N, D)`` / shared ``(N, D)`` for a replica-batched model.
        num_particles: ``S``.
        seed: seeds the draws (ignored when ``eps`` is given).
        eps: standard normal draws ``(S, [R,] N, d)`` to use instead.
        beta_weighted: the beta-VAE objective instead of the ELBO.
        chunk_size: points per chunk (bounds memory).
        grad: keep the autograd graph (default: evaluate under ``torch.no_grad``).
    """
    check_int("num_particles", num_particles)
    check_int("chunk_size", chunk_size)
    x = as_replica_batch(vae, x)
    n = vae.batch_size_of(x)
    if eps is None:
        eps = standard_noise(vae, num_particles, n, seed)
    dim = -1 - vae.obs_event_dim
    out = []
    with torch.set_grad_enabled(grad):
        for start in range(0, n, chunk_size):
            xs = x.narrow(dim, start, min(chunk_size, n - start))
            es = eps.narrow(-2, start, xs.shape[dim])
            out.append(log_weights(vae, guide, xs, es, beta_weighted=beta_weighted).mean(0))
    return torch.cat(out, dim=-1)
