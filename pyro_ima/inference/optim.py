"""A Pyro optimizer that steps all parameters with one torch optimizer (and one LR schedule)."""

from __future__ import annotations

import inspect
from collections.abc import Callable

import torch
from pyro.optim import PyroOptim

__all__ = ["JointOptim", "Adam"]


class JointOptim(PyroOptim):
    """Like :class:`pyro.optim.PyroOptim`, but one torch optimizer over all parameters.

    ``PyroOptim`` keeps a separate torch optimizer per parameter tensor and steps them one by
    one: for the small models here that Python loop costs more than the arithmetic. Elementwise
    optimizers (Adam, SGD) compute the same updates either way (up to rounding where the kernels
    differ); this one builds a single optimizer over the parameters SVI hands it and rebuilds
    it if that set changes.

    Kernels: Adam and AdamW run torch's fused kernels (one pass per tensor) where every
    parameter is a contiguous float tensor on a CPU or CUDA device, unless ``optim_args`` names
    ``foreach``, sets ``fused`` or ``differentiable``, or ``JointOptim.fused_kernels`` is
    ``False``; otherwise multi-tensor ``foreach`` kernels where the optimizer has them (with
    ``fused=False`` too). On a CPU the fused Adam makes a studies-sized ``fit`` step about 10%
    faster (``benchmarks/bench_training_loop.py``, row 5). Fused and foreach updates agree up
    to float rounding, but a fused kernel's scalar tail rounds differently from its vector
    body, so an element's last bits can depend on where it sits in its tensor (a replica's
    rows, once ``fit`` drops stopped replicas). ``JointOptim.fused_kernels = False`` (this
    process only) gives foreach kernels throughout. A state restored by :meth:`set_state`
    runs with the kernels chosen here, whichever it was saved with.

    Arguments:
        optim_constructor: a ``torch.optim.Optimizer`` class.
        optim_args: its keyword arguments.
        scheduler: optionally a ``torch.optim.lr_scheduler`` class, stepped by
            :meth:`end_epoch` (once per epoch in ``fit``).
        scheduler_args: its keyword arguments.
    """

    fused_kernels = True  # fused kernels where the optimizer and the parameters allow

    def __init__(self, optim_constructor, optim_args: dict, scheduler=None,
                 scheduler_args: dict | None = None):
        super().__init__(optim_constructor, optim_args)
        self._joint: torch.optim.Optimizer | None = None
        self._joint_params: tuple = ()
        self._scheduler_cls, self._scheduler_args = scheduler, dict(scheduler_args or {})
        self._scheduler = None
        self._pending: dict | None = None  # a state set before the optimizer was built

    def __call__(self, params, *args, **kwargs) -> None:
        params = tuple(params)
        same = len(params) == len(self._joint_params) and all(
            a is b for a, b in zip(params, self._joint_params, strict=True))
        if self._joint is None or not same:  # by identity: tensors' == is elementwise
            state = self._joint.state if self._joint is not None else {}
            lr = self._joint.param_groups[0]["lr"] if self._joint is not None else None
            self._joint = self.pt_optim_constructor(list(params), **self._kernel_args(params))
            if lr is not None:  # a rebuilt optimizer keeps the schedule's current rate
                for group in self._joint.param_groups:
                    group["lr"] = lr
            for p in params:  # keep moments of parameters seen before
                if p in state:
                    self._joint.state[p] = state[p]
            self._joint_params = params
            if self._pending is not None:  # set_state before the first step
                pending, self._pending = self._pending, None
                self._load(pending)
            if self._scheduler_cls is not None:  # continues from the current rate
                self._scheduler = self._scheduler_cls(self._joint, **self._scheduler_args)
        self._joint.step(*args, **kwargs)

    def _kernel_args(self, params) -> dict:
        """The optimizer's arguments, with the fastest kernels its parameters allow."""
        args = dict(self.pt_optim_args)
        if "foreach" in args or args.get("fused") or args.get("differentiable"):
            return args  # (torch has no fused differentiable kernels)
        if (self.fused_kernels and "fused" not in args
                and self.pt_optim_constructor in (torch.optim.Adam, torch.optim.AdamW)
                and params and all(p.is_floating_point() and p.is_contiguous()
                                   and p.device.type in ("cpu", "cuda") for p in params)):
            args["fused"] = True
        elif "foreach" in inspect.signature(self.pt_optim_constructor).parameters:
            args["foreach"] = True
        return args

    def end_epoch(self) -> None:
        """Advance the learning-rate schedule (if any) by one epoch."""
        if self._scheduler is not None:
            self._scheduler.step()

    def reset_rows(self, mask_of: Callable[[torch.Tensor], torch.Tensor]) -> None:
        """Clear the optimizer's per-element state (Adam's moments) where ``mask_of(p)`` is
        true, e.g. the rows of replicas rolled back after a numerical fault."""
        if self._joint is None:
            return
        with torch.no_grad():
            for p, state in self._joint.state.items():
                m = mask_of(p)
                for v in state.values():
                    if torch.is_tensor(v) and v.shape == p.shape:
                        v.masked_fill_(m.expand_as(v), 0.0)

    def carry_rows(self, pairs: dict[torch.Tensor, torch.Tensor], rows: torch.Tensor) -> None:
        """Move the state of each ``old`` parameter (``pairs``: ``{old: new}``) to ``new``,
        keeping the rows ``rows`` of per-element state (Adam's moments; scalars such as the
        step count are copied), e.g. when training goes on with a subset of the replicas. The
        old parameters' state is dropped; the learning rate and schedule carry on."""
        if self._joint is None:
            return
        state = self._joint.state
        for old, new in pairs.items():
            if old not in state:
                continue
            own = state.pop(old)
            state[new] = {k: (v[rows.to(v.device)].clone() if v.shape == old.shape else v.clone())
                          if torch.is_tensor(v) else v for k, v in own.items()}

    def get_state(self) -> dict:
        return {} if self._joint is None else {"joint": self._joint.state_dict()}

    def set_state(self, state: dict) -> None:
        """Restore a :meth:`get_state` (Pyro's ``PyroOptim.load`` calls this); before the first
        step it waits until the optimizer is built over the parameters."""
        if not state:
            return
        if self._joint is None:
            self._pending = state
        else:
            self._load(state)

    def _load(self, state: dict) -> None:
        saved = dict(state["joint"])
        # the kernels are this process's choice (a state saved with foreach kernels, or
        # before they were fused, runs fused here and the other way round); torch converts
        # the step counts to what the group's kernels expect while loading
        flags = {k: None for k in ("fused", "foreach") if k in self._joint.defaults}
        flags.update((k, v) for k, v in self._kernel_args(self._joint_params).items()
                     if k in ("fused", "foreach"))
        saved["param_groups"] = [{**g, **flags} for g in saved["param_groups"]]
        self._joint.load_state_dict(saved)


def Adam(optim_args: dict, *, lr_decay: float | None = None) -> JointOptim:  # noqa: N802
    """``torch.optim.Adam`` over all parameters at once (see :class:`JointOptim`), optionally
    with the learning rate multiplied by ``lr_decay`` after every epoch."""
    args = dict(optim_args)
    if lr_decay is None:
        return JointOptim(torch.optim.Adam, args)
    return JointOptim(torch.optim.Adam, args, torch.optim.lr_scheduler.ExponentialLR,
                      {"gamma": lr_decay})
