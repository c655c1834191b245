"""A Pyro optimizer that steps all parameters with one torch optimizer."""

from __future__ import annotations

import torch
from pyro.optim import PyroOptim

__all__ = ["JointOptim", "Adam"]


class JointOptim(PyroOptim):
    """Like :class:`pyro.optim.PyroOptim`, but one torch optimizer over all parameters.

    ``PyroOptim`` keeps a separate torch optimizer per parameter tensor and steps them one by
    one: for the small models here that Python loop costs more than the arithmetic. Elementwise
    optimizers (Adam, SGD) compute exactly the same updates either way; this one builds a
    single optimizer (multi-tensor ``foreach`` kernels where supported) over the parameters SVI
    hands it and rebuilds it if that set changes.
    """

    def __init__(self, optim_constructor, optim_args: dict):
        super().__init__(optim_constructor, optim_args)
        self._joint = None
        self._joint_params: tuple = ()

    def __call__(self, params, *args, **kwargs) -> None:
        params = tuple(params)
        if self._joint is None or params != self._joint_params:
            state = self._joint.state if self._joint is not None else {}
            self._joint = self.pt_optim_constructor(list(params), **self.pt_optim_args)
            for p in params:  # keep moments of parameters seen before
                if p in state:
                    self._joint.state[p] = state[p]
            self._joint_params = params
        self._joint.step(*args, **kwargs)

    def get_state(self) -> dict:
        return {} if self._joint is None else {"joint": self._joint.state_dict()}

    def set_state(self, state: dict) -> None:
        if state and self._joint is not None:
            self._joint.load_state_dict(state["joint"])


def Adam(optim_args: dict) -> JointOptim:  # noqa: N802 (mirrors pyro.optim.Adam)
    """``torch.optim.Adam`` over all parameters at once (see :class:`JointOptim`)."""
    args = dict(optim_args)
    args.setdefault("foreach", True)
    return JointOptim(torch.optim.Adam, args)
