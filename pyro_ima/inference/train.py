"""SVI training: minibatches, validation, per-replica early stopping, best-state restore."""

from __future__ import annotations

import contextlib
import dataclasses
import math
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import pyro
import pyro.optim
import pyro.poutine.util
import torch
from pyro.infer import SVI

from .._utils import check_int, check_positive, derive_seed, generator, replica_seeds
from ..models.guides import AmortizedGaussianGuide
from ..models.subset import ReplicaSubset, why_not
from ..models.vae import VAE
from .elbo import ReplicaTraceELBO, as_replica_batch, vae_elbo_per_point
from .optim import Adam

__all__ = ["fit", "FitConfig", "FitResult", "trainable_parameters"]

# Stream keys (see _utils.derive_seed): one generator per replica for minibatch order and
# training noise, one for the fixed validation noise.
_TRAIN_STREAM, _VAL_STREAM = 2, 3


@dataclass(frozen=True)
class FitConfig:
    """How :func:`fit` trains.

    Arguments:
        epochs: maximum number of epochs.
        batch_size: minibatch size (a last partial batch is dropped).
        lr: Adam's learning rate (the default optimizer's).
        lr_end: with the default optimizer, decay the learning rate exponentially from ``lr``
            so that the last epoch runs at ``lr_end`` (``None``: constant).
        patience: epochs without a validation improvement before a replica acts on the plateau:
            it halves its step size while it has ``lr_halvings`` left, then stops
            (``None``: never stop early).
        min_delta: how much (nats per point) the validation ELBO must rise above the replica's
            best to count as an improvement; the rest is noise.
        lr_halvings: how often a replica on a plateau halves its step size (and starts counting
            patience anew from its best state) before it stops; each replica has its own
            schedule, so replica ``r`` still trains as a run with seed ``seed[r]`` (up to float
            rounding).
        val_particles: particles for the validation ELBO (fixed draws for the whole run).
        max_faults: numerical faults a replica may survive before it is marked failed.
        drop_stopped: compute only the replicas still training: from the epoch after some
            stop (or from the start, for replicas outside ``train_mask``), the others train as
            a smaller batch (:class:`pyro_ima.models.subset.ReplicaSubset`), with the same
            draws, optimizer state and schedule, so each replica's result is the same up to
            float rounding (a CPU rounds the last elements of a tensor whose size is not a
            multiple of its vector width on another path, fused Adam included, so sizes that
            change with the batch can change last bits; bit-identical with
            ``JointOptim.fused_kernels = False`` where every per-replica activation is a whole
            number of vectors). Used with the default
            loss and optimizer and the library's own model, guide and network classes
            (``models.subset.why_not`` says when it is not).
    """

    epochs: int = 100
    batch_size: int = 64
    lr: float = 1e-3
    lr_end: float | None = None
    patience: int | None = None
    min_delta: float = 0.0
    lr_halvings: int = 0
    val_particles: int = 1
    max_faults: int = 3
    drop_stopped: bool = True

    def __post_init__(self):
        check_int("epochs", self.epochs)
        check_int("batch_size", self.batch_size)
        check_int("val_particles", self.val_particles)
        check_int("max_faults", self.max_faults, minimum=0)
        check_int("lr_halvings", self.lr_halvings, minimum=0)
        if not (isinstance(self.min_delta, (int, float)) and math.isfinite(self.min_delta)
                and self.min_delta >= 0):
            raise ValueError(f"min_delta: expected a finite number >= 0, got {self.min_delta!r}")
        check_positive("lr", self.lr)
        if self.lr_end is not None:
            check_positive("lr_end", self.lr_end)
        if self.patience is not None:
            check_int("patience", self.patience)
        if not isinstance(self.drop_stopped, bool):
            raise TypeError(f"drop_stopped: expected True or False, got {self.drop_stopped!r}")


@dataclass
class FitResult:
    """What :func:`fit` returns; every per-replica field is a ``(R,)`` tensor.

    ``history`` has one dict per epoch: ``epoch``, ``train_elbo`` (mean per point and replica
    computed that epoch, from the SVI losses), ``val_elbo`` (one value per replica: ``None``
    where non-finite or where the replica was not computed, i.e. with
    ``FitConfig.drop_stopped`` one already stopped, failed or outside ``train_mask``),
    ``active`` (replicas still training), ``computed`` (replicas in that epoch's batch).
    ``lr_halvings`` counts each replica's plateau halvings of its step size
    (``FitConfig.lr_halvings``); ``stopped_early`` says which replicas the plateau rule stopped
    (the others ran out of epochs or failed). ``best_epoch`` is -1 and ``best_val_elbo`` NaN
    for a replica that never validated. ``faults`` lists every numerical fault (``epoch``,
    ``step``, ``replica``, ``action``: ``"rollback"`` or ``"failed"``); ``failed`` says which
    replicas gave up (their parameters are their best validated state, or their starting state
    without validation data; their numbers must not be used).
    """

    failed: torch.Tensor
    best_epoch: torch.Tensor
    best_val_elbo: torch.Tensor
    lr_halvings: torch.Tensor
    stopped_early: torch.Tensor
    history: list[dict] = field(default_factory=list)
    faults: list[dict] = field(default_factory=list)
    epochs_run: int = 0
    steps: int = 0
    seconds: float = 0.0
    config: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        """A JSON-ready copy (tensors as lists, NaN as ``None``)."""
        out = dataclasses.asdict(self)
        for k in ("failed", "best_epoch", "best_val_elbo", "lr_halvings", "stopped_early"):
            out[k] = [None if isinstance(v, float) and math.isnan(v) else v
                      for v in getattr(self, k).tolist()]
        return out


def trainable_parameters(vae: VAE,
                         guide: AmortizedGaussianGuide) -> dict[str, torch.Tensor]:
    """The parameters SVI trains, keyed ``model.*`` / ``guide.*``."""
    params = {f"model.{k}": p for k, p in vae.named_parameters()}
    params.update({f"guide.{k}": p for k, p in guide.named_parameters()})
    return params


class _Replicas:
    """The per-replica bookkeeping of one fit: which replicas train, their faults, best states
    and patience, as ``(R,)`` tensors; rollback, freezing and restoring act on their rows."""

    def __init__(self, params: dict[str, torch.Tensor], R: int, cfg: FitConfig, optim):
        self.params, self.R, self.cfg, self.optim = params, R, cfg, optim
        self.active = torch.ones(R, dtype=torch.bool, device="cpu")
        self.trained = self.active.clone()  # fit's train_mask
        self.failed = torch.zeros(R, dtype=torch.bool, device="cpu")
        self.n_faults = torch.zeros(R, dtype=torch.long, device="cpu")
        self.step_scale = torch.ones(R, dtype=torch.float64, device="cpu")
        self.best_val = torch.full((R,), -math.inf, dtype=torch.float64, device="cpu")
        self.best_epoch = torch.full((R,), -1, dtype=torch.long, device="cpu")
        self.bad_epochs = torch.zeros(R, dtype=torch.long, device="cpu")
        self.halvings = torch.zeros(R, dtype=torch.long, device="cpu")
        self.best_state = self._snapshot()
        self.good_state = self.best_state
        self.faults: list[dict] = []

    def _snapshot(self) -> dict[str, torch.Tensor]:
        return {k: p.detach().clone() for k, p in self.params.items()}

    def _rows(self, mask: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
        """``mask`` ``(R,)`` shaped to broadcast against parameter ``p`` (leading replica dim;
        with one replica any parameter shape)."""
        mask = mask.to(p.device)
        return mask.reshape((-1,) + (1,) * (p.dim() - 1)) if p.dim() else mask.reshape(())

    def _where(self, mask: torch.Tensor, state: dict[str, torch.Tensor]) -> None:
        """Set the rows of ``mask`` of every parameter to ``state``."""
        with torch.no_grad():
            for k, p in self.params.items():
                torch.where(self._rows(mask, p), state[k], p, out=p)

    def start_epoch(self) -> None:
        self.good_state = self._snapshot()

    def nonfinite(self) -> torch.Tensor:
        """``(R,)``: replicas with a non-finite parameter."""
        bad = torch.zeros(self.R, dtype=torch.bool, device="cpu")
        for p in self.params.values():
            ok = torch.isfinite(p.detach())
            bad |= ~(ok.reshape(self.R, -1) if p.dim() and p.shape[0] == self.R
                     else ok.reshape(1, -1)).all(-1).cpu()
        return bad

    def fault(self, bad: torch.Tensor, epoch: int, step: int) -> None:
        """Roll the replicas in ``bad`` back to the epoch's start, clear their optimizer
        moments and halve their steps; after ``max_faults`` faults a replica fails."""
        bad = bad & self.active
        for r in bad.nonzero().flatten().tolist():
            self.n_faults[r] += 1
            action = "failed" if int(self.n_faults[r]) > self.cfg.max_faults else "rollback"
            self.faults.append({"epoch": epoch, "step": step, "replica": r, "action": action})
            self.failed[r] |= action == "failed"
            self.step_scale[r] *= 0.5
        self._where(bad, self.good_state)
        if hasattr(self.optim, "reset_rows"):
            self.optim.reset_rows(lambda p: self._rows(bad, p))
        self.active &= ~self.failed

    def after_step(self, step_loss: float, per_replica: torch.Tensor | None, before,
                   epoch: int, step: int) -> bool:
        """Handle reduced step sizes, faults and frozen replicas; True if the step counts."""
        if before is not None:  # replicas after a fault or a plateau take smaller steps
            # before + s (p - before), one pass; lerp gives exactly p where s = 1, so those
            # rows stay bit-identical to a lone run
            with torch.no_grad():
                for k, p in self.params.items():
                    torch.lerp(before[k], p, self._rows(self.step_scale, p).to(p.dtype), out=p)
        # A non-finite parameter makes the next loss non-finite, so parameters are checked
        # when the loss is (and at the end of every epoch), not after every step.
        bad = torch.zeros(self.R, dtype=torch.bool, device="cpu")
        if not math.isfinite(step_loss):
            bad = self.nonfinite() | (self.active.clone() if per_replica is None else
                                      ~torch.isfinite(per_replica).cpu())
        ok = not bool((bad & self.active).any())
        if not ok:
            self.fault(bad, epoch, step)
        if not bool(self.active.all()):  # stopped replicas keep their best state
            self._where(~self.active, self.best_state)
        return ok and math.isfinite(step_loss)

    def validate(self, v: torch.Tensor, epoch: int, step: int) -> None:
        """Update best states and patience from the validation ELBO ``v`` ``(R,)``; a replica
        on a plateau halves its step (``lr_halvings`` times) and then stops."""
        v = v.double().cpu()
        self.fault(~torch.isfinite(v), epoch, step)
        improved = self.active & (v > self.best_val + self.cfg.min_delta) & torch.isfinite(v)
        # the best state is the best seen, even for a rise below min_delta
        better = self.active & (v > self.best_val) & torch.isfinite(v)
        self.best_val = torch.where(better, v, self.best_val)
        self.best_epoch = torch.where(better, epoch, self.best_epoch)
        self.bad_epochs = torch.where(improved, 0, self.bad_epochs + 1)
        with torch.no_grad():
            for k, p in self.params.items():
                self.best_state[k] = torch.where(self._rows(better, p), p, self.best_state[k])
        if self.cfg.patience is None:
            return
        plateau = self.active & (self.bad_epochs >= self.cfg.patience)
        halve = plateau & (self.halvings < self.cfg.lr_halvings)
        self.halvings += halve.long()
        self.step_scale = torch.where(halve, self.step_scale * 0.5, self.step_scale)
        self.bad_epochs = torch.where(halve, 0, self.bad_epochs)
        self._where(halve, self.best_state)  # back to the best state, then smaller steps
        self.active &= ~(plateau & ~halve)

    _PER_REPLICA = ("active", "trained", "failed", "n_faults", "step_scale", "best_val",
                    "best_epoch", "bad_epochs", "halvings")

    def narrow(self, rows: torch.Tensor, params: dict[str, torch.Tensor]) -> _Replicas:
        """The bookkeeping of replicas ``rows`` alone, on ``params`` (their copies, keyed as
        this book's); :meth:`absorb` writes it back."""
        sub = _Replicas.__new__(_Replicas)
        sub.params, sub.R, sub.cfg, sub.optim = params, len(rows), self.cfg, self.optim
        for name in self._PER_REPLICA:
            setattr(sub, name, getattr(self, name)[rows].clone())
        sub.best_state = {k: v[rows.to(v.device)] for k, v in self.best_state.items()}
        sub.good_state, sub.faults = sub.best_state, []
        return sub

    def absorb(self, sub: _Replicas, rows: torch.Tensor) -> None:
        """Take back the rows of a :meth:`narrow` ed book (faults in this book's numbering)."""
        for name in self._PER_REPLICA:
            getattr(self, name)[rows] = getattr(sub, name)
        for k, v in self.best_state.items():
            v[rows.to(v.device)] = sub.best_state[k]
        self.faults += [{**f, "replica": int(rows[f["replica"]])} for f in sub.faults]
        sub.faults = []

    def result(self, validated: bool, **fields) -> FitResult:
        """Restore each validated replica's best state; the final per-replica facts."""
        if validated:
            self._where(self.best_epoch >= 0, self.best_state)
        best_val = torch.where(self.best_epoch >= 0, self.best_val, math.nan)
        return FitResult(self.failed.clone(), self.best_epoch.clone(), best_val,
                         self.halvings.clone(), ~self.active & ~self.failed & self.trained,
                         faults=self.faults, **fields)


def _check_pair(vae, guide) -> dict[str, torch.Tensor]:
    """Refuse a model/guide pair that cannot train together; return the trainable params."""
    if not isinstance(vae, VAE):
        raise TypeError(f"vae: expected a VAE, got {type(vae).__name__}")
    if not isinstance(guide, AmortizedGaussianGuide) or guide.model is not vae:
        raise ValueError("guide: expected a guide built for this vae (DiagonalGuide(vae, ...))")
    params = trainable_parameters(vae, guide)
    for name, p in {**params, **{f"guide.{k}": b for k, b in guide.named_buffers()}}.items():
        if p.device != vae.device or (p.is_floating_point() and p.dtype != vae.dtype):
            raise ValueError(f"{name}: is {p.dtype} on {p.device} but the model is "
                             f"{vae.dtype} on {vae.device}; move both with .to(device, dtype)")
        if vae.replicas > 1 and p.shape[:1] != (vae.replicas,) and name in params:
            raise ValueError(f"{name}: every trainable parameter of a replica-batched model "
                             f"needs a leading replica dim {vae.replicas}, got {tuple(p.shape)}")
    return params


def _draws(gens, n: int, cfg: FitConfig, particles: int, d: int, like: torch.Tensor):
    """One epoch's minibatch indices ``(R, T, B)`` and noise ``(T, S, R, B, d)``, each
    replica from its own generator."""
    T, B = n // cfg.batch_size, cfg.batch_size
    idx = torch.stack([torch.randperm(n, generator=g, device=g.device)[: T * B] for g in gens])
    noise = torch.stack([torch.randn((T, particles, B, d), generator=g, device=g.device,
                                     dtype=like.dtype) for g in gens], dim=2)
    return idx.view(len(gens), T, B), noise


def _val_chunk(replicas: int, device: torch.device) -> int:
    """Validation points per chunk: on a CPU about 32k replica-points at a time (for the
    whole fit's ``R``, so it stays fixed as replicas stop), which measured fastest for the
    MLPs here (2x faster than 4,096 points at R = 100; values equal up to float rounding);
    elsewhere the estimator's default 4,096."""
    if device.type != "cpu":
        return 4096
    return max(256, min(4096, 32768 // replicas)) // 64 * 64  # whole vectors per replica


def _end_epoch(optim) -> None:
    """Advance a learning-rate schedule by one epoch (ours or a Pyro scheduler)."""
    if hasattr(optim, "end_epoch"):
        optim.end_epoch()
    elif isinstance(optim, pyro.optim.PyroLRScheduler):
        optim.step()


class _Batch:
    """The replicas one epoch computes: all of them, or (:meth:`narrowed`) those still
    training, as a :class:`~pyro_ima.models.subset.ReplicaSubset` with its own bookkeeping,
    loss, SVI, generators and validation data. :meth:`finish` writes its bookkeeping back."""

    def __init__(self, vae, guide, book: _Replicas, loss, optim, gens, x_val, val_eps,
                 subset: ReplicaSubset | None = None, full: _Replicas | None = None):
        self.vae, self.guide, self.book, self.loss, self.optim = vae, guide, book, loss, optim
        self.full = book if full is None else full
        self.subset, self.gens = subset, gens
        self.index = (torch.arange(book.R, device="cpu") if subset is None
                      else subset.rows)  # on the CPU
        self.rows = self.index.to(vae.device)[:, None]
        self.x_val, self.val_eps = x_val, val_eps
        self.svi = SVI(vae.model, guide.guide, optim, loss)

    def installed(self):
        return self.subset.installed() if self.subset is not None else contextlib.nullcontext()

    def tensors(self) -> dict[torch.Tensor, torch.Tensor]:
        """``{full parameter: the tensor this batch trains}``."""
        own = {} if self.subset is None else self.subset.parameters()
        return {p: own.get(p, p) for p in self.full.params.values()}

    def narrowed(self) -> _Batch:
        """This batch's active replicas as a new batch (the optimizer's state goes along)."""
        self.finish()
        full, keep = self.full, self.book.active.nonzero().flatten()  # rows of this batch
        index = self.index[keep]  # rows of the full batch
        subset = ReplicaSubset(self.vae, self.guide, index)
        copies = subset.parameters()
        if not set(full.params.values()) <= set(copies):
            raise RuntimeError("fit: a trainable parameter is not a per-replica tensor")
        self.optim.carry_rows({t: copies[p] for p, t in self.tensors().items()}, keep)
        pyro.get_param_store().clear()  # the copies register under the same names
        x_val, val_eps = self.x_val, self.val_eps
        if x_val is not None:
            on = keep.to(x_val.device)
            x_val = x_val[: len(keep)] if x_val.stride(0) == 0 else x_val[on]
            val_eps = val_eps[:, on]
        return _Batch(self.vae, self.guide,
                      full.narrow(index, {k: copies[p] for k, p in full.params.items()}),
                      ReplicaTraceELBO(len(index)), self.optim,
                      [self.gens[i] for i in keep.tolist()], x_val, val_eps, subset, full)

    def full_list(self, v: torch.Tensor) -> list:
        """This batch's per-replica values ``(R',)`` as a list over all ``R`` replicas
        (``None`` where not computed or not finite)."""
        out = [None] * self.full.R
        for r, x in zip(self.index.tolist(), v.tolist(), strict=True):
            out[r] = x if math.isfinite(x) else None
        return out

    def finish(self) -> None:
        """Write a narrowed batch's bookkeeping back into the full one."""
        if self.subset is not None:
            self.full.absorb(self.book, self.index)


def fit(vae: VAE, guide: AmortizedGaussianGuide, train, val=None, *,
        config: FitConfig | None = None, seed: int | Sequence[int] = 0,
        loss: pyro.infer.ELBO | None = None, optim: pyro.optim.PyroOptim | None = None,
        callbacks: Sequence[Callable[[int, dict], None]] = (),
        train_mask: torch.Tensor | Sequence[bool] | None = None, **overrides) -> FitResult:
    """Trains ``vae`` and ``guide`` jointly by SVI (``Trace_ELBO`` and Adam by default).

    Each epoch visits the training set in a fresh random order in minibatches, with the data
    plate scaled by ``N / batch_size``. After each epoch the validation ELBO (mean per point,
    fixed noise draws so epochs compare fairly) decides early stopping; the best state is
    restored at the end. Every replica has its own seed, minibatch order, noise, best state and
    patience: a replica that stops is reset to its best state and frozen while the others go
    on, so replica ``r`` trains as a single run with seed ``seed[r]`` (up to float rounding:
    a CPU may round the last elements of a tensor of another size on another path).

    Numerical faults are caught at the step: a non-finite loss, parameter or validation ELBO
    rolls that replica back to its state at the start of the epoch, clears its optimizer
    moments (with a :class:`~pyro_ima.inference.optim.JointOptim`) and halves its step size;
    after ``max_faults`` faults it is marked failed and frozen. Other replicas never notice.

    Parameters live in the modules themselves; each call runs in a fresh Pyro param-store
    scope under process-unique names, so runs never share or freeze each other's parameters.

    Arguments:
        vae, guide: the model and a guide built for it (same device and dtype).
        train: training data ``(N, ...)`` (shared by replicas) or ``(R, N, ...)``, or a
            ``Split``; converted to the model's device and dtype.
        val: validation data (same forms); without it the last state is kept (a failed
            replica's: its starting state).
        config: a :class:`FitConfig`; ``**overrides`` replace its fields (``epochs=50``).
        seed: an int (replica ``r`` uses ``seed + r``) or one seed per replica.
        loss: any Pyro ELBO; default :class:`~pyro_ima.inference.elbo.ReplicaTraceELBO`.
            Several particles must be vectorized.
        optim: a Pyro optimizer; default Adam over all parameters at once. A Pyro
            learning-rate scheduler (``pyro.optim.ExponentialLR``) is stepped once per epoch.
        callbacks: called as ``callback(epoch, record)`` after each epoch.
        train_mask: ``(R,)`` booleans, the replicas to train (default: all); the others keep
            their parameters (e.g. a precision warm-up that some replicas skip) and report
            ``best_epoch`` -1.
    """
    unknown = set(overrides) - {f.name for f in dataclasses.fields(FitConfig)}
    if unknown:
        raise TypeError(f"{sorted(unknown)[0]}: not an argument of fit nor a FitConfig field")
    cfg = dataclasses.replace(config or FitConfig(), **overrides)
    params = _check_pair(vae, guide)
    R, d = vae.replicas, vae.latent_dim
    seeds = replica_seeds(seed, R)
    x_train = as_replica_batch(vae, getattr(train, "x", train), "train")
    x_val = None if val is None else as_replica_batch(vae, getattr(val, "x", val), "val")
    for x in (x_train,) if x_val is None else (x_train, x_val):
        vae.check_data(x)
    n = x_train.shape[1]
    if cfg.batch_size > n:
        raise ValueError(f"batch_size: expected at most the {n} training points, "
                         f"got {cfg.batch_size}")
    narrow = (cfg.drop_stopped and loss is None and optim is None
              and why_not(vae, guide) is None)
    loss = ReplicaTraceELBO(R) if loss is None else loss
    particles = getattr(loss, "num_particles", 1)
    if particles > 1 and not getattr(loss, "vectorize_particles", False):
        raise ValueError("loss: several particles need vectorize_particles=True "
                         "(each particle must get its own noise draw)")
    decay = None if cfg.lr_end is None else (cfg.lr_end / cfg.lr) ** (1 / max(cfg.epochs - 1, 1))
    optim = Adam({"lr": cfg.lr}, lr_decay=decay) if optim is None else optim
    book = _Replicas(params, R, cfg, optim)
    if train_mask is not None:
        mask = torch.as_tensor(train_mask, device="cpu")
        if mask.dtype != torch.bool or mask.shape != (R,):
            raise ValueError(f"train_mask: expected {R} booleans (one per replica), got "
                             f"{mask.dtype} of shape {tuple(mask.shape)}")
        book.active &= mask
        book.trained = mask.clone()
    gens = [generator(derive_seed(s, _TRAIN_STREAM), vae.device) for s in seeds]
    val_eps = None if x_val is None else torch.stack([torch.randn(
        (cfg.val_particles, x_val.shape[1], d), generator=g, device=vae.device, dtype=vae.dtype)
        for g in (generator(derive_seed(s, _VAL_STREAM), vae.device) for s in seeds)], dim=1)
    validate_args = pyro.poutine.util.is_validation_enabled()
    steps, history, epoch, start = 0, [], -1, time.perf_counter()
    with pyro.get_param_store().scope(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", "Encountered (NaN|Inf)", UserWarning)  # see faults
        batch = _Batch(vae, guide, book, loss, optim, gens, x_val, val_eps)
        for epoch in range(cfg.epochs):
            if narrow and 0 < int(batch.book.active.sum()) < batch.book.R:
                batch = batch.narrowed()  # compute only the replicas still training
            wbook, svi = batch.book, batch.svi
            with batch.installed():
                idx, noise = _draws(batch.gens, n, cfg, particles, d, x_train)
                wbook.start_epoch()
                total = 0.0
                for t in range(idx.shape[1]):
                    before = wbook._snapshot() if bool((wbook.step_scale < 1).any()) else None
                    eps = noise[t] if particles > 1 else noise[t, 0]
                    # Pyro's argument checks run on the first step only (~15% of a small step)
                    with pyro.validation_enabled(validate_args and steps + t == 0):
                        step_loss = svi.step(x_train[batch.rows, idx[:, t]], eps, full_size=n)
                    if wbook.after_step(step_loss, getattr(batch.loss, "last_replica_elbo", None),
                                        before, epoch, t):
                        total += step_loss
                    if not bool(wbook.active.any()):
                        break
                steps += idx.shape[1]
                wbook.fault(wbook.nonfinite(), epoch, idx.shape[1])
                _end_epoch(optim)
                record = {"epoch": epoch, "train_elbo": -total / idx.shape[1] / n / wbook.R,
                          "active": int(wbook.active.sum()), "computed": wbook.R}
                if x_val is not None and bool(wbook.active.any()):
                    v = vae_elbo_per_point.batched(
                        vae, guide, batch.x_val, eps=batch.val_eps, beta_weighted=True,
                        chunk_size=_val_chunk(R, vae.device)).mean(-1)
                    wbook.validate(v, epoch, idx.shape[1])
                    record["val_elbo"] = batch.full_list(v)
                if not bool(wbook.active.all()):  # stopped ones wait at their best state
                    wbook._where(~wbook.active, wbook.best_state)
            history.append(record)
            for callback in callbacks:
                callback(epoch, record)
            if not bool(wbook.active.any()):
                break
        batch.finish()
    for callback in callbacks:  # e.g. a progress bar
        getattr(callback, "close", lambda: None)()
    return book.result(x_val is not None, history=history, epochs_run=epoch + 1, steps=steps,
                       seconds=time.perf_counter() - start,
                       config={**dataclasses.asdict(cfg), "seeds": seeds,
                               "loss": type(loss).__name__, "particles": particles})
