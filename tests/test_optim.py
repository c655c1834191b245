"""The optimizer's kernels: fused where torch has them."""

import torch
from conftest import assert_close

from pyro_ima import inference


def _params(dtype=torch.float32):
    torch.manual_seed(1)
    return (torch.randn(4, 3, 5, dtype=dtype, requires_grad=True),
            torch.randn(4, 1, 5, dtype=dtype, requires_grad=True))


def _kernels(optim, params):
    """The (fused, foreach) flags of the torch optimizer ``optim`` builds over ``params``."""
    for p in params:
        p.grad = torch.ones_like(p)
    optim(params)
    group = optim._joint.param_groups[0]
    return bool(group.get("fused")), bool(group.get("foreach"))


def test_joint_optim_runs_fused_adam_on_cpu_unless_told_otherwise(monkeypatch):
    assert _kernels(inference.Adam({"lr": 0.1}), _params()) == (True, False)
    assert _kernels(inference.JointOptim(torch.optim.AdamW, {"lr": 0.1}),
                    _params(torch.float64)) == (True, False)
    # told otherwise: foreach, fused off, differentiable (torch has no fused kernel for it)
    assert _kernels(inference.Adam({"lr": 0.1, "foreach": True}), _params()) == (False, True)
    assert _kernels(inference.Adam({"lr": 0.1, "fused": False}), _params()) == (False, True)
    assert inference.Adam({"lr": 0.1, "differentiable": True})._kernel_args(_params()) == \
        {"lr": 0.1, "differentiable": True}
    # parameters fused kernels do not take: not contiguous, not on a CPU or CUDA device
    w = torch.randn(5, 4).t().requires_grad_()
    assert _kernels(inference.Adam({"lr": 0.1}), (w,)) == (False, True)
    meta = torch.empty(3, device="meta", requires_grad=True)
    assert inference.Adam({"lr": 0.1})._kernel_args((meta,)) == {"lr": 0.1, "foreach": True}
    # optimizers other than Adam / AdamW get foreach kernels
    assert _kernels(inference.JointOptim(torch.optim.Rprop, {"lr": 0.1}), _params()) == \
        (False, True)
    monkeypatch.setattr(inference.JointOptim, "fused_kernels", False)
    assert _kernels(inference.Adam({"lr": 0.1}), _params()) == (False, True)


def test_a_restored_state_runs_with_this_processs_kernels():
    # a state saved with foreach kernels (as before fused ones) goes on fused, and the other
    # way round, from the same moments and step count
    for saved_with, expect in (({"foreach": True}, (True, False)),
                               ({"fused": True}, (False, True))):
        params = _params()
        source = inference.Adam({"lr": 0.1, **saved_with})
        for _ in range(3):
            _kernels(source, params)
        target = inference.Adam({"lr": 0.1} if "foreach" in saved_with else
                                {"lr": 0.1, "foreach": True})
        assert _kernels(target, params) == expect  # one step: builds the optimizer
        target.set_state(source.get_state())
        assert _kernels(target, params) == expect
        state = target._joint.state[params[0]]
        assert float(state["step"]) == 4
        assert state["step"].dtype == torch.float32
    # restored before the first step (Pyro's PyroOptim.load in a fresh process): it waits for
    # the parameters and goes on from the saved step count and moments
    params = _params()
    source = inference.Adam({"lr": 0.1})
    for _ in range(3):
        _kernels(source, params)
    moments = source._joint.state[params[0]]["exp_avg"].clone()
    fresh = inference.Adam({"lr": 0.1})
    fresh.set_state(source.get_state())
    for p in params:
        p.grad = torch.zeros_like(p)
    fresh(params)
    state = fresh._joint.state[params[0]]
    assert float(state["step"]) == 4
    assert_close(state["exp_avg"], 0.9 * moments, rtol=1e-6, atol=0)


def test_fused_and_foreach_adam_agree_to_rounding():
    runs = []
    for args in ({"lr": 0.05}, {"lr": 0.05, "foreach": True}):
        params = _params(torch.float64)
        optim = inference.Adam(args)
        for step in range(30):
            for p in params:
                p.grad = torch.sin(p * (step + 1)).detach()
            optim(params)
        assert bool(optim._joint.param_groups[0]["fused"]) == ("foreach" not in args)
        runs.append([p.detach().clone() for p in params])
    start = _params(torch.float64)
    for fused, plain, p0 in zip(*runs, start, strict=True):
        assert (fused - p0).abs().min() > 1e-3  # it moved
        assert_close(fused, plain, rtol=1e-12, atol=1e-13)
