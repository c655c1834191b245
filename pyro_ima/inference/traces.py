"""Per-datapoint log-weights from the traces of any Pyro model and guide.

A model qualifies when its local latents and observations sit inside a ``"data"`` plate
(optionally inside a ``"replicas"`` plate, in either order). For each sample site the
log-density is taken *unscaled* (no subsample or ``poutine.scale`` factor; masks apply), the
dims of the particle, replica and data plates are kept and every other dim (inner plates,
undeclared batch dims) is summed, using each site's ``cond_indep_stack``. So a point's value
never depends on the batch it came in, on minibatch scaling or on chunking.
"""

from __future__ import annotations

import pyro
import torch
from pyro import poutine
from pyro.poutine.subsample_messenger import _Subsample

__all__ = ["per_point_log_weights", "plate_structure", "PlateStructure", "PARTICLES"]

PARTICLES = "_pyro_ima_particles"
"""The name of the vectorized particle plate the estimators add outside the model's plates."""


class PlateStructure:
    """What a dry run of a model/guide pair says about its plates.

    ``max_plate_nesting``: how many plate dims the pair uses; ``size`` and ``full_size``: the
    data plate's batch and full size (they differ when the model subsamples inside);
    ``replicas``: the replica plate's size, or ``None``.
    """

    def __init__(self, max_plate_nesting: int, size: int, full_size: int,
                 replicas: int | None):
        self.max_plate_nesting, self.size, self.full_size = max_plate_nesting, size, full_size
        self.replicas = replicas


def _sample_sites(trace):
    for name, site in trace.nodes.items():
        if site["type"] == "sample" and not isinstance(site["fn"], _Subsample):
            yield name, site


def _traces(model, guide, args, kwargs):
    guide_tr = poutine.trace(guide).get_trace(*args, **kwargs)
    model_tr = poutine.trace(poutine.replay(model, trace=guide_tr)).get_trace(*args, **kwargs)
    _check_sites(model_tr, guide_tr)
    return model_tr, guide_tr


def _check_sites(model_tr, guide_tr) -> None:
    """Refuse a guide whose latent sites are not the model's: a model latent the guide does
    not sample would be drawn from its prior on replay and a guide site the model lacks would
    enter as a stray density, so the weights would silently be of another model."""
    latent = {name for name, site in _sample_sites(model_tr) if not site["is_observed"]}
    observed = {name for name, site in _sample_sites(model_tr) if site["is_observed"]}
    sampled = {name for name, site in _sample_sites(guide_tr)
               if not site["is_observed"] and not (site.get("infer") or {}).get("is_auxiliary")}
    missing, extra = sorted(latent - sampled), sorted(sampled - latent)
    if missing or extra:
        parts = [f"the guide does not sample the model's latent {n!r}" for n in missing]
        parts += [f"the guide samples {n!r}, which the model "
                  f"{'observes' if n in observed else 'does not have'}" for n in extra]
        raise ValueError(f"guide: its sample sites must be the model's latent sites: "
                         f"{'; '.join(parts)}")


def plate_structure(model, guide, *args, data_plate: str = "data",
                    replica_plate: str = "replicas", **kwargs) -> PlateStructure:
    """Trace ``guide`` and ``model`` once (without gradients) and describe their plates.

    Refuses, naming the site, a latent or observed site outside the data plate (a global
    latent has no per-point ELBO), a model without a data plate, and a guide whose sample
    sites are not the model's latent sites.
    """
    with torch.no_grad():
        model_tr, guide_tr = _traces(model, guide, args, kwargs)
    nesting, data_frame, rep_size = 0, None, None
    for which, tr in (("model", model_tr), ("guide", guide_tr)):
        for name, site in _sample_sites(tr):
            frames = {f.name: f for f in site["cond_indep_stack"]}
            nesting = max([nesting] + [-f.dim for f in frames.values() if f.vectorized])
            if data_plate not in frames:
                kind = "observed site" if site["is_observed"] else "latent site"
                raise ValueError(
                    f"model: the {which}'s {kind} {name!r} is outside the {data_plate!r} plate; "
                    f"per-point estimates need every local latent and observation inside "
                    f"pyro.plate({data_plate!r}, N) (a global latent has no per-point ELBO)")
            data_frame = data_frame or frames[data_plate]
            if replica_plate in frames:
                rep_size = frames[replica_plate].size
    if data_frame is None:
        raise ValueError(f"model: no sample site inside a pyro.plate({data_plate!r}, N); the "
                         f"per-point estimators need the data plate")
    full = getattr(data_frame, "full_size", None) or data_frame.size
    return PlateStructure(nesting, data_frame.size, full, rep_size)


def _per_point(lp: torch.Tensor, frames: dict, roles: tuple[str, ...]) -> torch.Tensor:
    """``lp`` summed over every dim but the plates in ``roles``, which come out in that order
    (absent ones as size-1 dims)."""
    nd = lp.dim()
    pos = {role: nd + frames[role].dim for role in roles
           if role in frames and nd + frames[role].dim >= 0}
    other = [i for i in range(nd) if i not in pos.values()]
    if other:
        lp = lp.sum(other)
    order = sorted(pos, key=pos.get)  # the kept dims as they now stand
    lp = lp.permute([order.index(r) for r in roles if r in pos]) if len(order) > 1 else lp
    shape, it = [], iter(lp.shape)
    for role in roles:
        shape.append(next(it) if role in pos else 1)
    return lp.reshape(shape)


def per_point_log_weights(model, guide, *args, num_particles: int = 1,
                          max_plate_nesting: int | None = None, data_plate: str = "data",
                          replica_plate: str = "replicas", scaled: bool = False,
                          **kwargs) -> torch.Tensor:
    """``log p(x_n, z_s) - log q(z_s | x_n)`` per particle and point: ``(S, B)``, or
    ``(S, R, B)`` when the model has a replica plate.

    ``z_s`` are ``num_particles`` draws of ``guide`` (a vectorized particle plate outside the
    model's plates), ``model`` is replayed on them. ``scaled=True`` keeps each site's
    ``poutine.scale`` factors (e.g. a beta weight; never use it with subsampling). The draws
    come from PyTorch's global RNG: seed it (``pyro_ima._utils.seeded_rng``) for repeatable
    numbers. ``max_plate_nesting`` is found by a dry run when not given.
    """
    if max_plate_nesting is None:
        max_plate_nesting = plate_structure(model, guide, *args, data_plate=data_plate,
                                            replica_plate=replica_plate,
                                            **kwargs).max_plate_nesting
    with pyro.plate(PARTICLES, num_particles, dim=-(max_plate_nesting + 1)):
        try:
            model_tr, guide_tr = _traces(model, guide, args, kwargs)
        except ValueError as e:  # Pyro's multi-line report of NaN/inf distribution parameters
            if "Expected parameter" not in str(e):
                raise
            raise FloatingPointError(f"model: a distribution got NaN or inf parameters "
                                     f"({str(e).splitlines()[0][:100]}); does the decoder or "
                                     f"encoder return non-finite values?") from None
    key = "log_prob" if scaled else "unscaled_log_prob"
    has_replicas = any(replica_plate in {f.name for f in site["cond_indep_stack"]}
                       for tr in (model_tr, guide_tr) for _, site in _sample_sites(tr))
    roles = (PARTICLES, replica_plate, data_plate) if has_replicas else (PARTICLES, data_plate)
    total = 0.0
    for tr, sign in ((model_tr, 1.0), (guide_tr, -1.0)):
        tr.compute_log_prob()
        for name, site in _sample_sites(tr):
            frames = {f.name: f for f in site["cond_indep_stack"]}
            if data_plate not in frames:
                raise ValueError(f"model: site {name!r} is outside the {data_plate!r} plate "
                                 f"(a global latent has no per-point ELBO)")
            lp = site[key]
            mask = site["mask"]
            if not scaled and mask is not None:
                lp = torch.where(torch.as_tensor(mask, device=lp.device), lp, 0.0)
            total = total + sign * _per_point(lp, frames, roles)
    return total
