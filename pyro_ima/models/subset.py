"""Running a replica-batched model and guide on a subset of their replicas, in place.

Training keeps every replica in one batch; once some have stopped (early stopping, faults, a
``train_mask``), computing them is waste. :class:`ReplicaSubset` swaps each per-replica
parameter and buffer of a model/guide pair for a copy of the chosen rows, so the networks
compute only those replicas, and writes the rows back on the way out. Which tensors are
per-replica is read from the modules' ``replicas`` attribute, the convention every
replica-batched module here follows: a module whose ``replicas`` is ``R`` holds its own
parameters and buffers with a leading replica dim ``R``; one whose ``replicas`` is ``None`` is
shared by all replicas, with everything inside it. A pair this cannot be sure of (a module that
is not one of the library's networks or a ``torch.nn`` layer, one holding tensors without
saying, a decoder that is not a module, a subclass of the model or guide, a batched fixed
prior, a pinned guide mean) is not narrowed: :func:`why_not` says why.
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn

from ..priors import LearnablePrior
from .guides import GUIDES, AmortizedGaussianGuide
from .networks import MLP, BatchedConv2d, BatchedLinear, ConvDecoder, ConvEncoder, SmoothLeakyReLU
from .vae import VAE, BernoulliVAE, GaussianVAE

__all__ = ["ReplicaSubset", "why_not"]

_UNKNOWN = object()
# Modules that only hold other modules or tensors for their parent: they inherit its count.
_CONTAINERS = (nn.ModuleList, nn.ModuleDict, nn.Sequential, nn.ParameterList, nn.ParameterDict)
_MODELS = (VAE, GaussianVAE, BernoulliVAE)
# The library's networks, which keep no per-replica state outside their tensors. A module of
# another kind (a user's own) may (e.g. a replica index): the pair is then computed in full.
_NETWORKS = (MLP, BatchedLinear, BatchedConv2d, ConvEncoder, ConvDecoder, SmoothLeakyReLU,
             LearnablePrior)


def _walk(roots, R: int):
    """``(entries, counted)``: ``(module, kind, name, tensor)`` of every per-replica tensor
    under ``roots`` and the modules whose ``replicas`` is ``R``; or a string saying why the
    modules cannot be narrowed."""
    entries, counted, seen = [], [], set()
    known = _NETWORKS + _MODELS + tuple(GUIDES.values())

    def walk(m: nn.Module, inherited, path: str):
        if id(m) in seen:
            return None
        seen.add(id(m))
        if not (type(m) in known or type(m).__module__.startswith("torch.nn.")):
            return f"{path}: a {type(m).__name__} is not one of the library's networks"
        own = getattr(m, "replicas", _UNKNOWN)
        if own is _UNKNOWN:
            own = inherited if isinstance(m, _CONTAINERS) or inherited is None else _UNKNOWN
        if getattr(m, "replicas", None) == R:  # its count changes with the subset
            counted.append(m)
        tensors = [(kind, name, t) for kind, store in (("param", m._parameters),
                                                       ("buffer", m._buffers))
                   for name, t in store.items() if t is not None]
        if tensors and own is _UNKNOWN:
            return (f"{path}: a {type(m).__name__} holds tensors but has no `replicas` "
                    "attribute")
        if tensors and own is not None:
            if own != R:
                return f"{path}: has replicas={own}, the model {R}"
            for kind, name, t in tensors:
                if t.dim() == 0 or t.shape[0] != R:
                    return (f"{path}.{name}: expected a leading replica dim {R}, "
                            f"got {tuple(t.shape)}")
                entries.append((m, kind, name, t))
        for child_name, child in m.named_children():
            why = walk(child, own, f"{path}.{child_name}")
            if why:
                return why
        return None

    for prefix, root in roots:
        why = walk(root, _UNKNOWN, prefix)
        if why:
            return why
    return entries, counted


def _plan(vae: VAE, guide: AmortizedGaussianGuide):
    """:func:`_walk` of the pair, or the reason it cannot be narrowed."""
    if type(vae) not in _MODELS or type(guide) not in tuple(GUIDES.values()):
        return (f"a {type(vae).__name__} / {type(guide).__name__}: only the library's own model "
                "and guide classes are narrowed")
    if vae.replicas < 2:
        return "one replica"
    if not isinstance(vae.decoder, nn.Module):
        return "the decoder is not a module (its tensors cannot be seen)"
    if vae.learned_prior is None and vae._fixed_prior.batch_shape != ():
        return "the prior has a batch shape"
    if guide._loc_override is not None:
        return "the guide's mean is pinned (fix_loc)"
    plan = _walk([("model.decoder", vae.decoder), ("model", vae), ("guide", guide)],
                 vae.replicas)
    if isinstance(plan, str):
        return plan
    covered = {id(t) for *_, t in plan[0]}
    for name, p in [*vae.named_parameters(), *guide.named_parameters()]:
        if p.requires_grad and id(p) not in covered:
            return f"{name}: a trainable parameter shared by the replicas"
    return plan


def why_not(vae: VAE, guide: AmortizedGaussianGuide) -> str | None:
    """``None`` if :class:`ReplicaSubset` can narrow this pair, else the reason."""
    plan = _plan(vae, guide)
    return plan if isinstance(plan, str) else None


class ReplicaSubset:
    """The replicas ``rows`` of ``vae`` and ``guide``, ready to swap in.

    On construction each per-replica parameter and buffer is copied at ``rows`` (new leaf
    parameters, so an optimizer can own them). Inside :meth:`installed` the modules hold those
    copies and every ``replicas`` count is ``len(rows)``: the pair is a model of the chosen
    replicas only. On leaving (also by an exception) the copies are written back into their
    rows of the full tensors, and the full tensors and counts are put back. The copies persist
    between entries (an optimizer's state stays attached to them); each entry first refreshes
    them from the full tensors, so a change made between entries is seen.

    Arguments:
        vae, guide: a pair :func:`why_not` accepts.
        rows: the replicas to keep, ``(R',)`` indices in increasing order.
    """

    def __init__(self, vae: VAE, guide: AmortizedGaussianGuide, rows: torch.Tensor):
        plan = _plan(vae, guide)
        if isinstance(plan, str):
            raise ValueError(f"vae, guide: cannot run on a subset of replicas: {plan}")
        R = vae.replicas
        rows = torch.as_tensor(rows, dtype=torch.long, device="cpu").flatten()
        if rows.numel() == 0 or not bool((rows[1:] > rows[:-1]).all()) or int(rows[0]) < 0 \
                or int(rows[-1]) >= R:
            raise ValueError(f"rows: expected increasing replica indices in [0, {R}), "
                             f"got {rows.tolist()}")
        self.vae, self.guide, self.rows, self.replicas = vae, guide, rows, R
        self._index = rows.to(vae.device)
        entries, self._counted = plan
        self._copies: dict[int, torch.Tensor] = {}  # by the full tensor's id: tied stay tied
        self._entries = []
        for module, kind, name, full in entries:
            if id(full) not in self._copies:
                part = full.detach()[self._index].clone()
                self._copies[id(full)] = (nn.Parameter(part, requires_grad=full.requires_grad)
                                          if kind == "param" else part)
            self._entries.append((module, kind, name, full, self._copies[id(full)]))
        self._inside = False

    def parameters(self) -> dict[nn.Parameter, nn.Parameter]:
        """``{full parameter: its copy}`` for the trainable ones."""
        return {full: part for _, kind, _, full, part in self._entries
                if kind == "param" and full.requires_grad}

    @contextlib.contextmanager
    def installed(self):
        """The modules hold the copies (refreshed from the full tensors) inside the block."""
        if self._inside:
            raise RuntimeError("ReplicaSubset.installed: already inside")
        with torch.no_grad():
            for _, _, _, full, part in self._entries:
                part.copy_(full[self._index])
        for module, kind, name, _, part in self._entries:
            (module._parameters if kind == "param" else module._buffers)[name] = part
        for m in self._counted:
            m.replicas = len(self.rows)
        self._inside = True
        try:
            yield self
        finally:
            with torch.no_grad():
                for _, _, _, full, part in self._entries:
                    full[self._index] = part
            for module, kind, name, full, _ in self._entries:
                (module._parameters if kind == "param" else module._buffers)[name] = full
            for m in self._counted:
                m.replicas = self.replicas
            self._inside = False
