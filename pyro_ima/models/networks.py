"""Replica-batchable networks: linear layers and MLPs with an optional leading replica dim."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .._utils import check_int, derive_seed, generator, replica_count, replica_seeds

__all__ = ["SmoothLeakyReLU", "BatchedLinear", "BatchedConv2d", "MLP", "smooth_leaky_relu",
           "ConvEncoder", "ConvDecoder", "CONV_BATCHING"]

# How a replica-batched conv layer runs its R convolutions: one grouped convolution, or one
# convolution per replica. "auto" picks per device (benchmarks/bench_conv_batching.py).
CONV_BATCHING = ("auto", "grouped", "loop")

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

    @classmethod
    def stack(cls, layers: Sequence[nn.Linear]) -> BatchedLinear:
        """The replica-batched layer whose replica ``r`` is ``layers[r]`` (copied)."""
        first = layers[0]
        new = cls.__new__(cls)
        nn.Module.__init__(new)
        new.in_features, new.out_features, new.replicas = (first.in_features, first.out_features,
                                                           len(layers))
        new.weight = nn.Parameter(torch.stack([m.weight.detach().T for m in layers]).clone())
        new.bias = nn.Parameter(torch.stack([m.bias.detach()[None] for m in layers]).clone())
        return new

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 3 and self.weight.dim() == 3 and x.shape[0] == self.weight.shape[0]:
            # (R, B, in): one fused batched multiply-add (3-5% faster per MLP step on a CPU,
            # benchmarks/bench_training_loop.py)
            return torch.baddbmm(self.bias, x, self.weight)
        # (*, R, B, in) @ (R, in, out) broadcasts over the leading dims.
        return torch.matmul(x, self.weight) + self.bias

    def replica(self, x: torch.Tensor, r: int) -> torch.Tensor:
        """Replica ``r``'s layer alone on ``(*, in)``."""
        return torch.matmul(x, self.weight[r]) + self.bias[r]

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


def _conv_batching(batching: str, device: torch.device) -> str:
    """``"auto"``: grouped convolutions except on the CPU, where a loop over replicas measured
    faster (benchmarks/bench_conv_batching.py)."""
    if batching not in CONV_BATCHING:
        raise ValueError(f"batching: expected one of {CONV_BATCHING}, got {batching!r}")
    if batching == "auto":
        return "loop" if device.type == "cpu" else "grouped"
    return batching


class BatchedConv2d(nn.Module):
    """Creates ``R`` 2-D convolutions (or transposed convolutions) run as one layer.

    The weights are stacked with a leading replica dim (``(R, *weight.shape)``, as every
    replica-batched parameter here), so per-replica rollback and best states work as for
    :class:`BatchedLinear`. Inputs are ``(R, M, C, H, W)`` (replica-major, as
    :class:`BatchedLinear`'s); replica ``r`` sees ``x[r]`` and uses the weights of
    ``layers[r]``. ``batching="grouped"`` runs one convolution with ``groups=R`` (channels of
    all replicas side by side); ``"loop"`` runs one per replica (the conv networks then run
    each replica's whole network on its own); ``"auto"`` picks by the device of the weights at
    call time: the loop on a CPU, grouped elsewhere.

    Arguments:
        layers: ``R`` ``nn.Conv2d`` or ``nn.ConvTranspose2d`` of one shape (copied).
        batching: ``"auto"``, ``"grouped"`` or ``"loop"``.
    """

    def __init__(self, layers: Sequence[nn.Conv2d | nn.ConvTranspose2d], batching: str = "auto"):
        super().__init__()
        _conv_batching(batching, torch.device("cpu"))
        first = layers[0]
        self.transposed = isinstance(first, nn.ConvTranspose2d)
        self.stride, self.padding, self.batching = first.stride, first.padding, batching
        self.replicas = len(layers)
        self.weight = nn.Parameter(torch.stack([m.weight.detach() for m in layers]).clone())
        self.bias = nn.Parameter(torch.stack([m.bias.detach() for m in layers]).clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        conv = F.conv_transpose2d if self.transposed else F.conv2d
        R = self.replicas
        if _conv_batching(self.batching, self.weight.device) == "loop":
            return torch.stack([self.replica(x[r], r) for r in range(R)])
        # groups=R: input channels r*C..(r+1)*C meet weight rows r*C.. (transposed) or
        # r*C_out.. (conv), which is the replica-major flattening of the stacked weights. The
        # output goes back as a transposed view, so a chain of grouped layers copies only once.
        y = conv(x.transpose(0, 1).flatten(1, 2), self.weight.flatten(0, 1),
                 self.bias.flatten(), self.stride, self.padding, groups=R)
        return y.unflatten(1, (R, -1)).transpose(0, 1)

    def replica(self, x: torch.Tensor, r: int) -> torch.Tensor:
        """Replica ``r``'s convolution alone on ``(M, C, H, W)``."""
        conv = F.conv_transpose2d if self.transposed else F.conv2d
        return conv(x, self.weight[r], self.bias[r], self.stride, self.padding)

    def extra_repr(self) -> str:
        kind = "transposed" if self.transposed else "conv"
        return f"{kind}, weight={tuple(self.weight.shape)}, batching={self.batching!r}"


def _per_replica(net: nn.Module, layers: Sequence[BatchedConv2d], h: torch.Tensor,
                 chain: Callable) -> torch.Tensor:
    """Run ``chain(h, apply)`` (``apply(layer, h)`` one layer) on the replica-major ``h``: all
    replicas at once (grouped convolutions), or, in ``"loop"`` batching, each replica's whole
    network on its own slice, then stacked: on a CPU this keeps every intermediate tensor one
    replica's size (measured faster, benchmarks/bench_conv_batching.py)."""
    conv = layers[0]
    if _conv_batching(conv.batching, conv.weight.device) == "grouped":
        return chain(h, lambda layer, v: layer(v))
    return torch.stack([chain(h[r], lambda layer, v, r=r: layer.replica(v, r))
                        for r in range(net.replicas)])


def _replica_major(x: torch.Tensor, event: int) -> tuple[torch.Tensor, tuple]:
    """``(*lead, R, B, *event) -> (R, M, *event)`` with ``M = prod(lead) B``, and ``lead``."""
    lead = x.shape[:-event - 2]
    x = x.movedim(-event - 2, 0)
    return x.reshape((x.shape[0], -1) + x.shape[x.dim() - event:]), lead


def _from_replica_major(y: torch.Tensor, lead: tuple, batch: int, event: int) -> torch.Tensor:
    """The inverse of :func:`_replica_major` for an output with ``event`` trailing dims."""
    y = y.reshape((y.shape[0],) + tuple(lead) + (batch,) + y.shape[2:])
    return y.movedim(0, -event - 2)


def _check_replica_input(x: torch.Tensor, replicas: int, event: int, name: str) -> torch.Tensor:
    """Inputs of a replica-batched net are ``(*, R, B, *event)``; ``(B, *event)`` is shared by
    every replica."""
    if x.dim() == event + 1:
        return x.expand((replicas,) + x.shape)
    if x.dim() < event + 2 or x.shape[-event - 2] != replicas:
        raise ValueError(f"{name}: expected (*, {replicas}, B, ...) or (B, ...) for a network "
                         f"with {replicas} replicas, got {tuple(x.shape)}")
    return x


class ConvEncoder(nn.Module):
    """Creates ``x (*, 3, 64, 64) -> (*, out)``: 4 conv layers (32 channels, kernel 4,
    stride 2, ReLU) then 3 linear layers (256, 256, out), as in the paper's Sprites VAE.

    Usable with every guide family: ``out = Guide.num_outputs(d)``. With ``replicas=R`` it is
    ``R`` independent encoders on ``(*, R, B, 3, 64, 64)`` inputs (replica ``r`` equals the
    unbatched encoder built with seed ``seeds[r]``), its convolutions run as ``batching``
    says (:class:`BatchedConv2d`).

    Arguments:
        out_features: output size.
        channels, hidden, in_channels: layer widths.
        seed: an int (replica ``r`` uses ``seed + r``) or one seed per replica.
        replicas: ``None`` (one network) or ``R``.
        batching: ``"auto"``, ``"grouped"`` or ``"loop"`` (replicated networks only).
    """

    def __init__(self, out_features: int, channels: int = 32, hidden: int = 256,
                 in_channels: int = 3, seed: int | Sequence[int] = 0,
                 replicas: int | None = None, batching: str = "auto"):
        super().__init__()
        check_int("out_features", out_features)
        self.out_features, self.replicas = out_features, replicas
        if replicas is not None:
            seeds = replica_seeds(seed, replica_count(replicas))
            nets = [ConvEncoder(out_features, channels, hidden, in_channels, s) for s in seeds]
            self.convs = nn.ModuleList(BatchedConv2d([n.conv[i] for n in nets], batching)
                                       for i in range(0, 8, 2))
            self.linears = nn.ModuleList(BatchedLinear.stack([n.mlp[i] for n in nets])
                                         for i in range(0, 5, 2))
            return
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
        if self.replicas is not None:
            x = _check_replica_input(x, self.replicas, 3, "x")
            h, lead = _replica_major(x, 3)  # (R, M, C, H, W)

            def chain(h, apply):
                for conv in self.convs:
                    h = F.relu(apply(conv, h))
                h = h.flatten(-3)  # ([R,] M, c * 16)
                for i, lin in enumerate(self.linears):
                    h = apply(lin, h) if i == len(self.linears) - 1 else F.relu(apply(lin, h))
                return h

            h = _per_replica(self, self.convs, h, chain)
            return _from_replica_major(h, lead, x.shape[-4], 1)
        batch = x.shape[:-3]
        h = self.conv(x.reshape((-1,) + x.shape[-3:]))  # (n, c, 4, 4)
        return self.mlp(h.flatten(1)).reshape(batch + (self.out_features,))


class ConvDecoder(nn.Module):
    """Creates ``z (*, d) -> (*, 3, 64, 64)``: the mirror of :class:`ConvEncoder` (3 linear
    layers, then 4 transposed convolutions; the output is the mean image, unconstrained).
    ``replicas``, ``seed`` and ``batching`` as for :class:`ConvEncoder`: with ``replicas=R``,
    ``(*, R, B, d) -> (*, R, B, 3, 64, 64)``."""

    def __init__(self, latent_dim: int, channels: int = 32, hidden: int = 256,
                 out_channels: int = 3, seed: int | Sequence[int] = 0,
                 replicas: int | None = None, batching: str = "auto"):
        super().__init__()
        check_int("latent_dim", latent_dim)
        self.channels, self.replicas = channels, replicas
        if replicas is not None:
            seeds = replica_seeds(seed, replica_count(replicas))
            nets = [ConvDecoder(latent_dim, channels, hidden, out_channels, s) for s in seeds]
            self.linears = nn.ModuleList(BatchedLinear.stack([n.mlp[i] for n in nets])
                                         for i in range(0, 5, 2))
            self.convs = nn.ModuleList(BatchedConv2d([n.deconv[i] for n in nets], batching)
                                       for i in range(0, 7, 2))
            return
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
        if self.replicas is not None:
            z = _check_replica_input(z, self.replicas, 1, "z")
            h, lead = _replica_major(z, 1)  # (R, M, d)

            def chain(h, apply):
                for lin in self.linears:
                    h = F.relu(apply(lin, h))
                h = h.unflatten(-1, (self.channels, 4, 4))  # ([R,] M, c, 4, 4)
                for i, conv in enumerate(self.convs):
                    h = apply(conv, h) if i == len(self.convs) - 1 else F.relu(apply(conv, h))
                return h

            h = _per_replica(self, self.convs, h, chain)
            return _from_replica_major(h, lead, z.shape[-2], 3)
        batch = z.shape[:-1]
        h = self.mlp(z.reshape(-1, z.shape[-1])).reshape(-1, self.channels, 4, 4)
        out = self.deconv(h)
        return out.reshape(batch + out.shape[1:])
