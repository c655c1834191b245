"""The linear Gaussian VAE in closed form: the oracle for every gap and likelihood check.

``x = W z + b + e``, ``z ~ N(0, I_d)``, ``e ~ N(0, gamma^-2 diag(tau^2))`` (``tau = 1``: the
paper's isotropic noise; docs/theory.md; paper appendix 10.1). Everything here is exact at
any ``gamma``, computed in float64 from ``W`` directly, and written independently of the
guide families' own maths (which it serves to test).
"""

from __future__ import annotations

import math

import torch

from ._utils import as_tensor_on, check_positive, generator
from .models.guides import AmortizedGaussianGuide, DiagonalGuide, FullCovGuide, IsotropicGuide

__all__ = ["LinearGaussian", "optimal_tau"]


class LinearGaussian:
    """Creates the linear Gaussian VAE ``x = W z + b + e`` with its closed forms.

    ``log p(x) = log N(x; b, W W^T + gamma^-2 T)`` with ``T = diag(tau^2)``; posterior
    precision ``P = I + gamma^2 W^T T^-1 W`` and mean ``P^-1 gamma^2 W^T T^-1 (x - b)``; with
    ``M = W^T T^-1 W + gamma^-2 I`` (so ``P = gamma^2 M``) the optimal gaps are
    ``1/2 (log det diag(M) - log det M)`` (diagonal guide, paper eq. 52-54),
    ``1/2 (d log(tr M / d) - log det M)`` (isotropic) and 0 (full covariance).

    Arguments:
        W: ``(D, d)`` with ``D >= d`` and full column rank.
        gamma2: the observation precision ``gamma^2``.
        b: the offset ``(D,)`` (default zero).
        tau: per-dimension noise scales ``(D,)`` (default ones), e.g. a learned
            ``GaussianVAE.tau()``.

    Example:
        >>> lg = LinearGaussian.random(3, gamma2=1e3, seed=0)
        >>> float(lg.gap(FullCovGuide))
        0.0
    """

    def __init__(self, W: torch.Tensor, gamma2: float, b: torch.Tensor | None = None,
                 tau: torch.Tensor | None = None):
        W = as_tensor_on(W, "cpu", torch.float64)
        if W.dim() != 2 or W.shape[0] < W.shape[1]:
            raise ValueError(f"W: expected a (D, d) matrix with D >= d, got {tuple(W.shape)}")
        check_positive("gamma2", gamma2)
        self.W, self.gamma2 = W, float(gamma2)
        self.D, self.d = W.shape
        self.b = torch.zeros(self.D, dtype=torch.float64, device="cpu") if b is None else \
            torch.as_tensor(b, dtype=torch.float64, device="cpu")
        self.tau = torch.ones(self.D, dtype=torch.float64, device="cpu") if tau is None else \
            as_tensor_on(tau, "cpu", torch.float64).reshape(-1)  # differentiable in tau
        if self.tau.shape != (self.D,) or not bool((self.tau > 0).all()) or \
                not bool(torch.isfinite(self.tau).all()):
            raise ValueError(f"tau: expected {self.D} positive finite scales, got "
                             f"{self.tau.detach().tolist()}")
        eye = torch.eye(self.d, dtype=torch.float64, device="cpu")
        self.M = W.T @ (W / self.tau.square().unsqueeze(-1)) + eye / self.gamma2
        self.P = self.gamma2 * self.M

    @classmethod
    def random(cls, d: int, gamma2: float, seed: int = 0, singular_values=None,
               data_dim: int | None = None) -> LinearGaussian:
        """A random ``W`` ``(D, d)`` with standard normal entries, or ``U diag(s) V^T`` with the
        given singular values ``s`` and random singular vectors (a chosen conditioning)."""
        g = generator(seed)
        D = data_dim or d
        W = torch.randn(D, d, generator=g, dtype=torch.float64, device="cpu")
        if singular_values is not None:
            u, _, vt = torch.linalg.svd(W, full_matrices=False)
            s = as_tensor_on(singular_values, "cpu", torch.float64)
            W = u @ torch.diag(s) @ vt
        return cls(W, gamma2)

    # -- the marginal and the posterior -------------------------------------------------------
    @property
    def cov_x(self) -> torch.Tensor:
        """``W W^T + gamma^-2 diag(tau^2)``, the covariance of ``x``."""
        return self.W @ self.W.T + torch.diag(self.tau.square()) / self.gamma2

    def log_px(self, x: torch.Tensor) -> torch.Tensor:
        """``log p(x)`` per point, float64, shape ``x.shape[:-1]``."""
        px = torch.distributions.MultivariateNormal(self.b, self.cov_x)
        return px.log_prob(as_tensor_on(x, "cpu", torch.float64).detach())

    def posterior_mean(self, x: torch.Tensor) -> torch.Tensor:
        """``P^-1 gamma^2 W^T T^-1 (x - b)`` per point, float64."""
        x = as_tensor_on(x, "cpu", torch.float64).detach()
        rhs = self.gamma2 * ((x - self.b) / self.tau.square()) @ self.W  # (*, d)
        return torch.linalg.solve(self.P, rhs.unsqueeze(-1)).squeeze(-1)

    def sample(self, n: int, seed: int = 1) -> torch.Tensor:
        """``n`` observations ``(n, D)``, float64, from ``z`` and noise of a private generator."""
        g = generator(seed)
        z = torch.randn(n, self.d, generator=g, dtype=torch.float64, device="cpu")
        e = torch.randn(n, self.D, generator=g, dtype=torch.float64, device="cpu")
        e = e * self.tau / math.sqrt(self.gamma2)
        return z @ self.W.T + self.b + e

    # -- the guide families' optima -------------------------------------------------------------
    def optimal_covariance(self, family: type[AmortizedGaussianGuide]) -> torch.Tensor:
        """The optimal guide covariance of ``family``: ``gamma^-2 diag(M)^-1`` (diagonal, the
        paper's ``D*``), ``d / (gamma^2 tr M) I`` (isotropic), ``P^-1`` (full)."""
        eye = torch.eye(self.d, dtype=torch.float64, device="cpu")
        forms = {DiagonalGuide: lambda: torch.diag(1.0 / self.M.diagonal()) / self.gamma2,
                 IsotropicGuide: lambda: eye * self.d / (self.gamma2 * self.M.trace()),
                 FullCovGuide: lambda: torch.linalg.inv(self.P)}
        return forms[family]()

    def gap(self, family: type[AmortizedGaussianGuide]) -> torch.Tensor:
        """``log p(x) - ELBO`` at the optimum of ``family`` (the same for every ``x``)."""
        logdet = torch.logdet(self.M)
        forms = {DiagonalGuide: lambda: 0.5 * (self.M.diagonal().log().sum() - logdet),
                 IsotropicGuide: lambda: 0.5 * (self.d * torch.log(self.M.trace() / self.d)
                                                - logdet),
                 FullCovGuide: lambda: torch.zeros((), dtype=torch.float64, device="cpu")}
        return forms[family]()

    def expected_log_px(self, data_cov: torch.Tensor | None = None) -> torch.Tensor:
        """``E[log p(x)]`` over data ``x ~ N(b, data_cov)`` (default: this model's own
        ``cov_x``), in closed form: ``-1/2 (D log 2 pi + log det C + tr(C^-1 data_cov))``."""
        C = self.cov_x
        S = C if data_cov is None else as_tensor_on(data_cov, "cpu", torch.float64)
        return -0.5 * (self.D * math.log(2 * math.pi) + torch.logdet(C)
                       + torch.linalg.solve(C, S).trace())

    # -- as a library model ---------------------------------------------------------------------
    def mixing(self):
        """The decoder ``z -> W z + b`` as a :class:`~pyro_ima.mixings.Linear` (square W)."""
        from .mixings import Linear
        return Linear(self.W, shift=self.b)

    def decoder(self):
        """The decoder ``z -> W z + b``: the :meth:`mixing` for a square ``W``, else a module
        with ``W`` and ``b`` as buffers (in PyTorch's default dtype)."""
        if self.D == self.d:
            return self.mixing()
        return _Affine(self.W.to(torch.get_default_dtype()), self.b.to(torch.get_default_dtype()))

    def vae(self, **kwargs):
        """A :class:`~pyro_ima.models.GaussianVAE` with this decoder fixed, a standard normal
        prior and precision ``gamma2`` (keyword arguments go to the model; with
        ``learn_prior=True`` this object's closed forms describe the model only at its starting
        prior)."""
        from .models import GaussianVAE
        from .priors import gaussian
        return GaussianVAE(self.decoder(), gaussian(self.d), self.gamma2, fixed_decoder=True,
                           **kwargs)


class _Affine(torch.nn.Module):
    """``z -> W z + b`` with fixed ``W`` ``(D, d)`` and ``b`` ``(D,)``."""

    def __init__(self, W: torch.Tensor, b: torch.Tensor):
        super().__init__()
        self.register_buffer("W", W.to(torch.get_default_device()))
        self.register_buffer("b", b.to(torch.get_default_device()))

    def forward(self, z):
        return z @ self.W.T + self.b


def optimal_tau(W: torch.Tensor, gamma2: float, family: type[AmortizedGaussianGuide],
                data_cov: torch.Tensor | None = None) -> tuple[torch.Tensor, float]:
    """The noise scales ``tau`` (geometric mean 1, as ``GaussianVAE`` learns them) that
    maximize the expected optimal ELBO of ``family``, ``E[log p_tau(x)] - gap_tau``, for the
    decoder ``W`` at precision ``gamma2`` and data ``x ~ N(0, data_cov)`` (default: the
    isotropic-noise model's own, ``W W^T + gamma^-2 I``). Exact objective, maximized over
    ``log tau`` by L-BFGS; returns ``(tau, gap at tau)``: the penalty a learned-``tau`` model
    of this family pays at its optimum (docs/theory.md, section 3)."""
    from scipy.optimize import minimize

    W = as_tensor_on(W, "cpu", torch.float64)
    D = W.shape[0]
    S = LinearGaussian(W, gamma2).cov_x if data_cov is None else \
        as_tensor_on(data_cov, "cpu", torch.float64)

    def tau_of(v) -> torch.Tensor:
        s = torch.as_tensor(v, dtype=torch.float64)
        return (s - s.mean()).exp()  # unit geometric mean

    def loss(v):
        s = torch.as_tensor(v, dtype=torch.float64).requires_grad_(True)
        lg = LinearGaussian(W, gamma2, tau=tau_of(s))
        val = -(lg.expected_log_px(S) - lg.gap(family))
        (grad,) = torch.autograd.grad(val, s)
        return float(val.detach()), grad.numpy()

    res = minimize(loss, torch.zeros(D, dtype=torch.float64).numpy(), jac=True,
                   method="L-BFGS-B", options={"gtol": 1e-12, "ftol": 1e-15, "maxiter": 1000})
    tau = tau_of(res.x)
    return tau, float(LinearGaussian(W, gamma2, tau=tau).gap(family))
