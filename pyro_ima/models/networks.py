"""Replica-batchable networks: linear layers and MLPs with an optional leading replica dim."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .._utils import check_int, derive_seed, generator, replica_count, replica_seeds

__all__ = ["SmoothLeakyReLU", "BatchedLinear", "MLP", "smooth_leaky_relu", "ConvEncoder",
           "ConvDecoder"]

# Stream key for network initialization (see _utils.derive_seed).
_INIT_STREAM = 1


def smooth_leaky_relu(x: torch.Tensor, slope: float = 0.2) -> torch.Tensor:
    """Computes ``a x + (1 - a) log(1 + e^x)``, a smooth, strictly increasing leaky ReLU."""
    return torch.lerp(F.softplus(x), x, slope)  # one fused op for a x + (1 - a) softplus(x)


class SmoothLeakyReLU(nn.Module):
    """Creates the activation ``a x + (1 - a) log(1 + e^x)`` (default ``a = 0.2``)."""

    def __init__(self, slope: float = 0.2):
        super().__init__()
        self.slope = slope

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return smooth_leaky_relu(x, self.slope)

    def extra_repr(self) -> str:
        return f"slope={self.slope}"


def _on_default_device(t: torch.Tensor) -> torch.Tensor:
    """Initial values are drawn on the CPU in float32 (seeded generators give the same numbers
    on every machine and in every precision), then placed where PyTorch puts new tensors, in
    its default dtype."""
    return t.to(torch.get_default_device(), torch.get_default_dtype())


class BatchedLinear(nn.Module):
    """Creates the affine map ``y = x W + b``, optionally one per replica.

    Without replicas ``W`` is ``(in, out)`` and ``x`` is ``(*, in)``. With ``replicas=R`` the
    weights are ``(R, in, out)`` and ``x`` is ``(*, R, B, in)`` (or ``(B, in)``, shared by every
    replica): replica ``r`` uses ``W[r]``. Initialization follows :class:`torch.nn.Linear`
    (uniform in ``+-1/sqrt(in)``), drawn for each replica from its own generator so that replica
    ``r`` equals the unbatched layer built with that replica's generator.

    Arguments:
        in_features: input size.
        out_features: output size.
        generators: one CPU ``torch.Generator`` per replica (one for an unbatched layer).
        replicas: number of replicas or ``None``.
    """

    def __init__(self, in_features: int, out_features: int, generators: Sequence[torch.Generator],
                 replicas: int | None = None):
        super().__init__()
        self.in_features, self.out_features, self.replicas = in_features, out_features, replicas
        bound = 1.0 / math.sqrt(in_features)

        def uniform(*shape, g):  # float32 draws whatever the default dtype: the same network
            return (torch.rand(shape, generator=g, device="cpu", dtype=torch.float32) * 2
                    - 1) * bound

        ws = torch.stack([uniform(in_features, out_features, g=g) for g in generators])
        bs = torch.stack([uniform(1, out_features, g=g) for g in generators])
        if replicas is None:  # an unbatched layer broadcasts over any replica axis
            ws, bs = ws[0], bs[0, 0]
        self.weight = nn.Parameter(_on_default_device(ws))  # ([R,] in, out)
        self.bias = nn.Parameter(_on_default_device(bs))  # ([R, 1,] out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # (*, R, B, in) @ (R, in, out) broadcasts over the leading dims.
        return torch.matmul(x, self.weight) + self.bias

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, replicas={self.replicas}"


class MLP(nn.Module):
    """Creates a multilayer perceptron ``x -> L_n(a(... a(L_1(x))))``, optionally per replica.

    Arguments:
        in_features: input size.
        out_features: output size.
        hidden: hidden layer sizes (default two layers of 50: a "3-layer MLP").
        activation: a module or callable applied between layers (default smooth leaky ReLU).
        replicas: ``None`` for one network on ``(*, in)`` inputs (it broadcasts over a replica
            axis), or ``R`` for ``R`` independent networks on ``(*, R, B, in)`` inputs.
        seed: an int (replica ``r`` uses ``seed + r``) or one seed per replica.

    Example:
        >>> net = MLP(3, 2, hidden=(8,), seed=0)
        >>> net(torch.zeros(5, 3)).shape
        torch.Size([5, 2])
    """

    def __init__(self, in_features: int, out_features: int, hidden: Sequence[int] = (50, 50),
                 activation: Callable[[torch.Tensor], torch.Tensor] | None = None,
                 replicas: int | None = None, seed: int | Sequence[int] = 0):
        super().__init__()
        check_int("in_features", in_features)
        check_int("out_features", out_features)
        for h in hidden:
            check_int("hidden", h)
        self.in_features, self.out_features, self.replicas = in_features, out_features, replicas
        self.seeds = replica_seeds(seed, replica_count(replicas))
        gens = [generator(derive_seed(s, _INIT_STREAM)) for s in self.seeds]
        sizes = [in_features, *hidden, out_features]
        self.layers = nn.ModuleList(
            BatchedLinear(a, b, gens, replicas) for a, b in zip(sizes[:-1], sizes[1:], strict=True))
        self.activation = activation if activation is not None else SmoothLeakyReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers[:-1]:
            x = self.activation(layer(x))
        return self.layers[-1](x)


def _seeded(module: nn.Module, seed: int) -> nn.Module:
    """Initialize ``module``'s layers (PyTorch's default scheme, in float32 on the CPU) from a
    private seed, then place it on PyTorch's default device in its default dtype."""
    dtype = torch.get_default_dtype()
    module.float()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derive_seed(seed, _INIT_STREAM))
        for m in module.modules():
            if hasattr(m, "reset_parameters") and m is not module:
                m.reset_parameters()
    return module.to(torch.get_default_device(), dtype)


class ConvEncoder(nn.Module):
    """Creates ``x (*, 3, 64, 64) -> (*, out)``: 4 conv layers (32 channels, kernel 4,
    stride 2, ReLU) then 3 linear layers (256, 256, out), as in the paper's Sprites VAE.

    Usable with every guide family: ``out = Guide.num_outputs(d)``.
    """

    def __init__(self, out_features: int, channels: int = 32, hidden: int = 256,
                 in_channels: int = 3, seed: int = 0):
        super().__init__()
        check_int("out_features", out_features)
        self.out_features, self.replicas = out_features, None
        c = channels
        with torch.device("cpu"):
            self.conv = nn.Sequential(
                nn.Conv2d(in_channels, c, 4, 2, 1), nn.ReLU(), nn.Conv2d(c, c, 4, 2, 1),
                nn.ReLU(), nn.Conv2d(c, c, 4, 2, 1), nn.ReLU(), nn.Conv2d(c, c, 4, 2, 1),
                nn.ReLU())
            self.mlp = nn.Sequential(nn.Linear(c * 16, hidden), nn.ReLU(),
                                     nn.Linear(hidden, hidden), nn.ReLU(),
                                     nn.Linear(hidden, out_features))
        _seeded(self, seed)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch = x.shape[:-3]
        h = self.conv(x.reshape((-1,) + x.shape[-3:]))  # (n, c, 4, 4)
        return self.mlp(h.flatten(1)).reshape(batch + (self.out_features,))


class ConvDecoder(nn.Module):
    """Creates ``z (*, d) -> (*, 3, 64, 64)``: the mirror of :class:`ConvEncoder` (3 linear
    layers, then 4 transposed convolutions; the output is the mean image, unconstrained)."""

    def __init__(self, latent_dim: int, channels: int = 32, hidden: int = 256,
                 out_channels: int = 3, seed: int = 0):
        super().__init__()
        check_int("latent_dim", latent_dim)
        self.channels, self.replicas = channels, None
        c = channels
        with torch.device("cpu"):
            self.mlp = nn.Sequential(nn.Linear(latent_dim, hidden), nn.ReLU(),
                                     nn.Linear(hidden, hidden), nn.ReLU(),
                                     nn.Linear(hidden, c * 16), nn.ReLU())
            self.deconv = nn.Sequential(
                nn.ConvTranspose2d(c, c, 4, 2, 1), nn.ReLU(), nn.ConvTranspose2d(c, c, 4, 2, 1),
                nn.ReLU(), nn.ConvTranspose2d(c, c, 4, 2, 1), nn.ReLU(),
                nn.ConvTranspose2d(c, out_channels, 4, 2, 1))
        _seeded(self, seed)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        batch = z.shape[:-1]
        h = self.mlp(z.reshape(-1, z.shape[-1])).reshape(-1, self.channels, 4, 4)
        out = self.deconv(h)
        return out.reshape(batch + out.shape[1:])
