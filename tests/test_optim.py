"""The optimizer's kernels: fused where torch has them."""

import torch
from conftest import assert_close

from pyro_ima import inference


def _params(dtype=torch.float32):
    torch.manual_seed(1)
    return (torch.randn(4, 3, 5, dtype=dtype, requires_grad=True),
            torch.randn(4, 1, 5, dtype=dtype, requires_grad=True))


def test_joint_optim_runs_fused_adam_on_cpu_unless_told_otherwise():
    params = _params()
    for p in params:
        p.grad = torch.ones_like(p)
    fused = inference.Adam({"lr": 0.1})
    fused(params)
    assert fused._joint.defaults["fused"] is True
    told = inference.Adam({"lr": 0.1, "foreach": True})
    told(params)
    assert told._joint.defaults["foreach"] is True and not told._joint.defaults["fused"]
    # an optimizer without fused kernels gets foreach ones
    rprop = inference.JointOptim(torch.optim.Rprop, {"lr": 0.1})
    rprop(params)
    assert rprop._joint.defaults["foreach"] is True


def test_fused_and_foreach_adam_agree_to_rounding():
    runs = []
    for args in ({"lr": 0.05}, {"lr": 0.05, "foreach": True}):
        params = _params(torch.float64)
        optim = inference.Adam(args)
        for step in range(30):
            for p in params:
                p.grad = torch.sin(p * (step + 1)).detach()
            optim(params)
        runs.append([p.detach().clone() for p in params])
    start = _params(torch.float64)
    for fused, plain, p0 in zip(*runs, start, strict=True):
        assert (fused - p0).abs().min() > 1e-3  # it moved
        assert_close(fused, plain, rtol=1e-12, atol=1e-13)
