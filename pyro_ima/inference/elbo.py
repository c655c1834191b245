"""Per-datapoint ELBOs: for any Pyro model and guide, and for the library's own VAEs."""

from __future__ import annotations

import pyro
import torch
from pyro.infer import Trace_ELBO

from .._utils import check_finite_tensor, check_int, derive_seed, generator, seeded_rng
from ..models.guides import AmortizedGaussianGuide, narrow_guide
from ..models.vae import VAE, squeezes_replicas
from .traces import per_point_log_weights, plate_structure

__all__ = ["log_weights", "elbo_per_point", "as_replica_batch", "standard_noise",
           "ReplicaTraceELBO", "data_chunks", "tensor_device", "check_options", "check_chunks"]


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


def tensor_device(args, kwargs) -> torch.device:
    """The device of the first tensor among ``args`` and ``kwargs`` (the CPU if none)."""
    for a in (*args, *kwargs.values()):
        if torch.is_tensor(a):
            return a.device
    return torch.device("cpu")


_FORMER_CHUNK_NAMES = ("chunk_points", "chunk_samples")
_CHUNK_HINT = "points per chunk are chunk_size=, samples per pass sample_chunk="


def check_options(call: str, kwargs: dict, accepted) -> None:
    """Refuse a keyword ``call`` does not take with a ``TypeError`` naming it and the accepted
    ones (instead of Python's, which names an internal function)."""
    for k in kwargs:
        if k not in accepted:
            hint = f"; {_CHUNK_HINT}" if k in _FORMER_CHUNK_NAMES else ""
            raise TypeError(f"{k}: not an argument of {call}; it takes "
                            f"{', '.join(accepted)}{hint}")


def check_chunks(chunk_size: int | None, sample_chunk: int | None = None) -> None:
    """``chunk_size`` (points per chunk) and ``sample_chunk`` (draws per pass): ``None`` (no
    chunking) or an int >= 1."""
    for name, value in (("chunk_size", chunk_size), ("sample_chunk", sample_chunk)):
        if value is not None:
            check_int(name, value)


def refuse_renamed(kwargs: dict) -> None:
    """The library VAEs' former chunk keywords, given with a plain Pyro model, would reach the
    model as its own keyword arguments: refuse them naming the chunk keywords."""
    for k in kwargs:
        if k in _FORMER_CHUNK_NAMES:
            raise TypeError(f"{k}: not an argument of the estimators; {_CHUNK_HINT}")


def data_chunks(args: tuple, kwargs: dict, n: int, chunk_size: int | None, data_dim: int):
    """``(args, kwargs)`` for consecutive chunks of at most ``chunk_size`` points: every tensor
    argument whose dim ``data_dim`` has the batch's ``n`` points is sliced along it."""
    if chunk_size is None or chunk_size >= n:
        yield args, kwargs
        return

    def cut(t, start):
        if torch.is_tensor(t) and t.dim() > data_dim and t.shape[data_dim] == n:
            return t.narrow(data_dim, start, min(chunk_size, n - start))
        return t

    for start in range(0, n, chunk_size):
        yield (tuple(cut(a, start) for a in args),
               {k: cut(v, start) for k, v in kwargs.items()})


def _generic_log_weights(model, guide, args, kwargs, *, num_particles: int, seed: int,
                         chunk_size: int | None, data_dim: int, data_plate: str,
                         replica_plate: str, sample_chunk: int | None = None) -> torch.Tensor:
    """``(S, [R,] N)`` log-weights of a plain Pyro pair, chunked over points and particles."""
    check_chunks(chunk_size, sample_chunk)
    refuse_renamed(kwargs)
    device = tensor_device(args, kwargs)
    with seeded_rng(seed, device):
        plates = plate_structure(model, guide, *args, data_plate=data_plate,
                                 replica_plate=replica_plate, **kwargs)
    if chunk_size is not None and plates.size != plates.full_size:
        raise ValueError("chunk_size: the model subsamples its data plate itself; evaluate its "
                         "subsample as one batch (chunk_size=None)")
    sample_chunk = sample_chunk or num_particles
    out = []
    with torch.no_grad():
        for i, (a, k) in enumerate(data_chunks(args, kwargs, plates.size, chunk_size, data_dim)):
            parts = []
            for j, s0 in enumerate(range(0, num_particles, sample_chunk)):
                with seeded_rng(derive_seed(seed, i, j), device):
                    parts.append(per_point_log_weights(
                        model, guide, *a, num_particles=min(sample_chunk, num_particles - s0),
                        max_plate_nesting=plates.max_plate_nesting, data_plate=data_plate,
                        replica_plate=replica_plate, **k))
            out.append(torch.cat(parts, 0))
    return torch.cat(out, -1)


# -- the library's own VAEs -----------------------------------------------------------------

def as_replica_batch(vae: VAE, x, name: str = "x") -> torch.Tensor:
    """``x`` shaped for ``vae`` (``(R, N, ...)``, its device and dtype), refusing NaN/inf."""
    x = vae.as_replica_batch(x)
    check_finite_tensor(name, x)
    return x


def standard_noise(vae: VAE, num_particles: int, n: int, seed: int) -> torch.Tensor:
    """Standard normal draws ``(S, R, N, d)`` on the model's device from a private generator."""
    g = generator(seed, vae.device)
    return torch.randn((num_particles, vae.replicas, n, vae.latent_dim), generator=g,
                       device=vae.device, dtype=vae.dtype)


def log_weights(vae: VAE, guide: AmortizedGaussianGuide, x: torch.Tensor, eps: torch.Tensor,
                *, beta_weighted: bool = False) -> torch.Tensor:
    """``log p(x, z_s) - log q(z_s | x)`` for ``z_s = T(mu + A eps_s)``, shape ``(S, R, B)``.

    :func:`~pyro_ima.inference.traces.per_point_log_weights` on ``vae.model`` and
    ``guide.guide`` with the given standard normal draws ``eps`` ``(S, R, B, d)``; unscaled
    log-densities (``beta_weighted=True`` keeps the beta weight on ``z``: the beta-VAE
    objective). ``x`` is ``(R, B, ...)`` (see :func:`as_replica_batch`). ``guide`` may be any
    object with a ``guide(x, eps=...)`` Pyro method, such as a Laplace proposal.
    """
    with pyro.get_param_store().scope():
        return per_point_log_weights(vae.model, guide.guide, x, eps=eps,
                                     num_particles=eps.shape[0], max_plate_nesting=2,
                                     scaled=beta_weighted)


@squeezes_replicas
def vae_elbo_per_point(vae: VAE, guide: AmortizedGaussianGuide, x, *, num_particles: int = 1,
                       seed: int = 0, eps: torch.Tensor | None = None,
                       beta_weighted: bool = False, chunk_size: int | None = 4096,
                       sample_chunk: int | None = None, grad: bool = False) -> torch.Tensor:
    """:func:`elbo_per_point` for the library's VAEs: ``(R, N)`` (``(N,)`` for
    ``replicas=None``), with standard normal draws ``(S, R, N, d)`` made for all ``N`` points at
    once from a private generator (or given as ``eps``), so neither ``chunk_size`` nor
    ``sample_chunk`` can change them."""
    check_int("num_particles", num_particles)
    check_chunks(chunk_size, sample_chunk)
    x = as_replica_batch(vae, x)
    n = x.shape[1]
    chunk_size = chunk_size or n
    if eps is None:
        eps = standard_noise(vae, num_particles, n, seed)
    S = eps.shape[0]
    sample_chunk = sample_chunk or S
    out = []
    with torch.set_grad_enabled(grad):
        for start in range(0, n, chunk_size):
            xs = x.narrow(1, start, min(chunk_size, n - start))
            es = eps.narrow(-2, start, xs.shape[1])
            gs = narrow_guide(guide, start, xs.shape[1])
            lw = [log_weights(vae, gs, xs, es.narrow(0, s0, min(sample_chunk, S - s0)),
                              beta_weighted=beta_weighted) for s0 in range(0, S, sample_chunk)]
            out.append(torch.cat(lw, 0).mean(0))
    return torch.cat(out, dim=-1)


_VAE_ELBO_OPTIONS = ("num_particles", "seed", "chunk_size", "sample_chunk", "eps",
                     "beta_weighted", "grad")


def elbo_per_point(model, guide, *args, num_particles: int = 1, seed: int = 0,
                   chunk_size: int | None = None, sample_chunk: int | None = None,
                   data_dim: int = 0, data_plate: str = "data",
                   replica_plate: str = "replicas", **kwargs) -> torch.Tensor:
    """The Monte-Carlo ELBO of every data point: ``(N,)``, or ``(R, N)`` with replicas.

    ``ELBO(x_n) ~ 1/S sum_s [log p(x_n, z_s) - log q(z_s | x_n)]``, ``z_s ~ q(z | x_n)``, read
    per point from Pyro traces with unscaled log-densities (see
    :func:`~pyro_ima.inference.traces.per_point_log_weights`).

    Two ways to call it:

    - ``elbo_per_point(model_fn, guide_fn, *args, **kwargs)`` for any Pyro model and guide whose
      local latents sit in a ``"data"`` plate; ``args``/``kwargs`` go to both. Draws come from
      PyTorch's RNG seeded with ``seed`` (forked: the caller's state is untouched; chunk ``i``
      uses a seed derived from ``seed`` and ``i``). ``chunk_size`` slices every tensor
      argument whose dim ``data_dim`` holds the batch's points; ``sample_chunk`` draws the
      particles in passes of that many.
    - ``elbo_per_point(vae, guide, x)`` for a :class:`~pyro_ima.models.VAE` and one of its
      guides: draws from a private generator on the model's device (or ``eps``
      ``(S, R, N, d)``), ``beta_weighted`` for the beta-VAE objective, ``grad`` to keep the
      graph, ``chunk_size`` (default 4096) and ``sample_chunk`` as above; any other keyword is
      refused naming it. Results ``(N,)`` for ``replicas=None``, else ``(R, N)``.
    """
    check_int("num_particles", num_particles)
    if isinstance(model, VAE):
        if len(args) != 1:
            raise TypeError("x: elbo_per_point(vae, guide, x) takes the data as its one "
                            "positional argument")
        check_options("elbo_per_point(vae, guide, x)", kwargs, _VAE_ELBO_OPTIONS)
        if chunk_size is not None:
            kwargs["chunk_size"] = chunk_size
        return vae_elbo_per_point(model, guide, args[0], num_particles=num_particles,
                                  seed=seed, sample_chunk=sample_chunk, **kwargs)
    _check_callables(model, guide)
    return _generic_log_weights(model, guide, args, kwargs, num_particles=num_particles,
                                seed=seed, chunk_size=chunk_size, data_dim=data_dim,
                                data_plate=data_plate, replica_plate=replica_plate,
                                sample_chunk=sample_chunk).mean(0)


def _check_callables(model, guide) -> None:
    if not callable(model):
        raise TypeError(f"model: expected a Pyro model (a callable) or a VAE, got "
                        f"{type(model).__name__}")
    if not callable(guide):
        raise TypeError(f"guide: expected a Pyro guide (a callable), got {type(guide).__name__}")
