"""SVI training: minibatches, validation, per-replica early stopping, best-state restore."""

from __future__ import annotations

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
from tqdm.auto import tqdm

from .._utils import check_finite_tensor, check_int, check_positive, derive_seed, replica_seeds
from ..models.guides import AmortizedGaussianGuide
from ..models.vae import GaussianVAE
from .elbo import ReplicaTraceELBO, as_replica_batch, elbo_per_point
from .optim import Adam as joint_adam
from .optim import JointOptim

__all__ = ["fit", "FitResult", "trainable_parameters"]

# Stream keys (see _utils.derive_seed): one generator per replica for minibatch order and
# training noise, one for the fixed validation noise.
_TRAIN_STREAM, _VAL_STREAM = 2, 3


@dataclass
class FitResult:
    """What :func:`fit` returns.

    ``history`` has one dict per epoch: ``epoch``, ``train_elbo`` (mean per point and replica,
    from the SVI losses), ``val_elbo`` (per replica list, or a float), ``active`` (replicas
    still training). ``best_epoch`` and ``best_val_elbo`` are per replica with replicas.
    ``faults`` lists every numerical fault (``epoch``, ``step``, ``replica``, ``action``:
    ``"rollback"`` or ``"failed"``); ``failed`` says which replicas gave up (their parameters
    are their last good ones, and their numbers must not be used).
    """

    history: list[dict] = field(default_factory=list)
    faults: list[dict] = field(default_factory=list)
    failed: list[bool] | bool = False
    best_epoch: list[int] | int | None = None
    best_val_elbo: list[float] | float | None = None
    epochs_run: int = 0
    steps: int = 0
    seconds: float = 0.0
    config: dict = field(default_factory=dict)


def trainable_parameters(vae: GaussianVAE,
                         guide: AmortizedGaussianGuide) -> dict[str, torch.Tensor]:
    """The parameters SVI trains, keyed ``model.*`` / ``guide.*``."""
    params = {f"model.{k}": p for k, p in vae.named_parameters()}
    params.update({f"guide.{k}": p for k, p in guide.named_parameters()})
    return params


def _data_x(name: str, data) -> torch.Tensor:
    x = getattr(data, "x", data)
    if not torch.is_tensor(x):
        raise TypeError(f"{name}: expected a tensor or a Split with .x, got {type(data).__name__}")
    check_finite_tensor(name, x)
    return x


def fit(vae: GaussianVAE, guide: AmortizedGaussianGuide, train, val=None, *,
        epochs: int = 100, batch_size: int = 64, lr: float = 1e-3, patience: int | None = None,
        seed: int | Sequence[int] = 0, loss: pyro.infer.ELBO | None = None,
        optim: pyro.optim.PyroOptim | None = None, val_particles: int = 1,
        max_faults: int = 3, progress: bool = False,
        on_epoch: Callable[[int, dict], None] | None = None) -> FitResult:
    """Trains ``vae`` and ``guide`` jointly by SVI (``Trace_ELBO`` and Adam by default).

    Each epoch visits the training set in a fresh random order in minibatches of
    ``batch_size`` (a last partial batch is dropped), with the data plate scaled by
    ``N / batch_size``. After each epoch the validation ELBO (mean per point, fixed noise
    draws so epochs compare fairly) decides early stopping; the best state is restored at the
    end. With a replica-batched model every replica has its own seed, minibatch order, noise,
    best state and patience: a replica that stops is reset to its best state and frozen while
    the others go on, so replica ``r`` trains exactly as a single run with seed ``seed[r]``.

    Parameters live in the modules themselves; each call runs in a fresh Pyro param-store
    scope under process-unique names, so runs never share or freeze each other's parameters.

    Arguments:
        vae, guide: the model and a guide built for it.
        train: training data ``(N, D)`` (shared by replicas) or ``(R, N, D)``, or a ``Split``.
        val: validation data (same forms); without it the last state is kept.
        epochs: maximum number of epochs.
        batch_size: minibatch size.
        lr: Adam's learning rate (ignored when ``optim`` is given).
        patience: epochs without a validation improvement before a replica stops
            (``None``: never stop early).
        seed: an int (replica ``r`` uses ``seed + r``) or one seed per replica.
        loss: any Pyro ELBO; default :class:`~pyro_ima.inference.elbo.ReplicaTraceELBO`
            (Pyro's ``Trace_ELBO`` that also reports each replica's value, so a non-finite loss
            is traced to its replica). Several particles must be vectorized.
        optim: a Pyro optimizer; default Adam with learning rate ``lr`` stepping all parameters
            at once (:class:`~pyro_ima.inference.optim.JointOptim`). A Pyro learning-rate
            scheduler (e.g. ``pyro.optim.ExponentialLR``) is stepped once per epoch.
        val_particles: particles for the validation ELBO.
        max_faults: numerical faults a replica may survive. A non-finite loss, parameter or
            validation ELBO is detected at the step it happens; the replica is rolled back to
            its state at the start of the epoch, its optimizer moments are cleared and its
            step size halved; after ``max_faults`` faults it is marked failed and frozen. Other
            replicas are not affected.
        progress: show a tqdm bar over epochs.
        on_epoch: called as ``on_epoch(epoch, record)`` after each epoch.
    """
    if not isinstance(vae, GaussianVAE):
        raise TypeError(f"vae: expected a GaussianVAE, got {type(vae).__name__}")
    if not isinstance(guide, AmortizedGaussianGuide) or guide.model is not vae:
        raise ValueError("guide: expected a guide built for this vae (DiagonalGuide(vae, ...))")
    check_int("epochs", epochs)
    check_int("batch_size", batch_size)
    check_int("val_particles", val_particles)
    check_positive("lr", lr)
    if patience is not None:
        check_int("patience", patience)
    R = vae.replicas
    seeds = replica_seeds(seed, R)
    x_raw = _data_x("train", train)
    x_train = as_replica_batch(vae, x_raw)
    x_val = None if val is None else as_replica_batch(vae, _data_x("val", val))
    vae.check_data(x_train)
    shared = R is not None and x_raw.dim() == vae.obs_event_dim + 1
    data_dim = -1 - vae.obs_event_dim
    n = x_train.shape[data_dim]
    if batch_size > n:
        raise ValueError(f"batch_size: expected at most the {n} training points, got {batch_size}")
    nest = 1 if R is None else 2
    loss = ReplicaTraceELBO(R, max_plate_nesting=nest) if loss is None else loss
    particles = getattr(loss, "num_particles", 1)
    if particles > 1 and not getattr(loss, "vectorize_particles", False):
        raise ValueError("loss: several particles need vectorize_particles=True "
                         "(each particle must get its own noise draw)")
    optim = joint_adam({"lr": lr}) if optim is None else optim
    params = trainable_parameters(vae, guide)
    if R is not None:
        for name, p in params.items():
            if p.shape[:1] != (R,):
                raise ValueError(f"{name}: every trainable parameter of a replica-batched model "
                                 f"needs a leading replica dim {R}, got {tuple(p.shape)}")

    gens = [torch.Generator().manual_seed(derive_seed(s, _TRAIN_STREAM)) for s in seeds]
    d = vae.latent_dim
    val_eps = None
    if x_val is not None:
        nv = x_val.shape[data_dim]
        draws = [torch.randn((val_particles, nv, d), generator=torch.Generator().manual_seed(
            derive_seed(s, _VAL_STREAM))) for s in seeds]
        val_eps = draws[0] if R is None else torch.stack(draws, dim=1)  # (S, [R,] Nv, d)

    steps_per_epoch = n // batch_size
    result = FitResult(config=dict(epochs=epochs, batch_size=batch_size, lr=lr, patience=patience,
                                   seeds=seeds, loss=type(loss).__name__, particles=particles,
                                   val_particles=val_particles))
    shape_r = (R,) if R is not None else ()
    best_val = torch.full(shape_r, -math.inf, dtype=torch.float64)
    best_epoch = torch.full(shape_r, -1, dtype=torch.long)
    bad_epochs = torch.zeros(shape_r, dtype=torch.long)
    active = torch.ones(shape_r, dtype=torch.bool)
    best_state = {k: p.detach().clone() for k, p in params.items()}
    failed = torch.zeros(shape_r, dtype=torch.bool)
    n_faults = torch.zeros(shape_r, dtype=torch.long)
    step_scale = torch.ones(shape_r, dtype=torch.get_default_dtype())
    start = time.perf_counter()

    def rows(mask, p):  # a per-replica mask shaped to broadcast against parameter p
        return mask if R is None else mask.view((R,) + (1,) * (p.dim() - 1))

    def apply_frozen():
        # Stopped replicas keep their best state: undo whatever the optimizer did to them.
        with torch.no_grad():
            for k, p in params.items():
                p.copy_(torch.where(rows(active, p), p, best_state[k]))

    def nonfinite_replicas() -> torch.Tensor:
        bad = torch.zeros(shape_r, dtype=torch.bool)
        for p in params.values():
            ok = torch.isfinite(p.detach())
            bad |= ~(ok.all() if R is None else ok.reshape(R, -1).all(-1))
        return bad

    def optimizer_states(p):
        if isinstance(optim, JointOptim):
            return [] if optim._joint is None else [optim._joint.state.get(p, {})]
        opt = getattr(optim, "optim_objs", {}).get(p)
        opt = getattr(opt, "optimizer", opt)  # schedulers wrap their optimizer
        return [] if opt is None else [opt.state.get(p, {})]

    def handle_faults(bad, epoch, step, good_state):
        nonlocal active
        for r in (range(R) if R is not None else [None]):
            if not bool(bad if r is None else bad[r]):
                continue
            idx = () if r is None else (r,)
            n_faults[idx] += 1
            action = "failed" if int(n_faults[idx]) > max_faults else "rollback"
            result.faults.append({"epoch": epoch, "step": step, "replica": r or 0,
                                  "action": action})
            if action == "failed":
                failed[idx] = True
            else:
                step_scale[idx] *= 0.5
        with torch.no_grad():
            for k, p in params.items():
                m = rows(bad, p)
                p.copy_(torch.where(m, good_state[k], p))
                for state in optimizer_states(p):
                    for v in state.values():  # clear the moments of the faulty rows
                        if torch.is_tensor(v) and v.shape == p.shape:
                            v.copy_(torch.where(m, torch.zeros_like(v), v))
        active = active & ~failed

    validate = pyro.poutine.util.is_validation_enabled()
    bar = tqdm(range(epochs), disable=not progress, desc="fit", leave=False)
    with torch.random.fork_rng(devices=[]), pyro.get_param_store().scope():
        torch.manual_seed(derive_seed(seeds[0], _TRAIN_STREAM, 1))  # nothing should draw here
        svi = SVI(vae.model, guide.guide, optim, loss)
        for epoch in bar:
            # Per replica: this epoch's order and noise, from that replica's own generator.
            perms, noises = [], []
            for g in gens:
                perms.append(torch.randperm(n, generator=g)[: steps_per_epoch * batch_size])
                noises.append(torch.randn((steps_per_epoch, particles, batch_size, d), generator=g))
            if R is None:
                idx = perms[0].view(steps_per_epoch, batch_size)
                noise = noises[0]  # (T, S, B, d)
            else:
                idx = torch.stack(perms).view(R, steps_per_epoch, batch_size)
                noise = torch.stack(noises, dim=2)  # (T, S, R, B, d)
            any_frozen = R is not None and not bool(active.all())
            with torch.no_grad():
                good_state = {k: p.detach().clone() for k, p in params.items()}
            total = 0.0
            for t in range(steps_per_epoch):
                scaled = bool((step_scale < 1).any())
                if scaled:
                    with torch.no_grad():
                        before = {k: p.detach().clone() for k, p in params.items()}
                if R is None:
                    xb = x_train[idx[t]]
                elif shared:
                    xb = x_train[0][idx[:, t]]
                else:
                    xb = x_train[torch.arange(R).unsqueeze(-1), idx[:, t]]
                eps = noise[t] if particles > 1 else noise[t, 0]
                # Pyro's argument/support validation runs on the first step only (shapes and
                # supports do not change afterwards); it costs ~15% of a small model's step.
                with pyro.validation_enabled(validate and result.steps + t == 0), \
                        warnings.catch_warnings():
                    # fit detects and records non-finite losses itself (result.faults)
                    warnings.filterwarnings("ignore", "Encountered (NaN|Inf)", UserWarning)
                    # eps positional, full_size a constant keyword: JitTrace_ELBO caches on these
                    step_loss = svi.step(xb, eps, full_size=n)
                bad = nonfinite_replicas()
                if not math.isfinite(step_loss):
                    per = getattr(loss, "last_replica_elbo", None)  # which replica, if known
                    bad |= active.clone() if per is None else ~torch.isfinite(per)
                bad &= active  # stopped and failed replicas are frozen anyway
                if bool(bad.any()):
                    handle_faults(bad, epoch, t, good_state)
                    any_frozen = R is not None and not bool(active.all())
                    if not bool(active.any()):
                        break
                else:
                    total += step_loss
                if scaled:  # replicas after a fault take smaller steps
                    with torch.no_grad():
                        for k, p in params.items():
                            s = rows(step_scale, p)
                            p.copy_(before[k] + s * (p - before[k]))
                if any_frozen:
                    apply_frozen()
            result.steps += steps_per_epoch
            if isinstance(optim, pyro.optim.PyroLRScheduler):
                optim.step()  # learning-rate schedules advance once per epoch
            record = {"epoch": epoch,
                      "train_elbo": -total / steps_per_epoch / n / (R or 1),
                      "active": int(active.sum()) if R is not None else 1}
            if x_val is not None and bool(active.any()):
                v = elbo_per_point(vae, guide, x_val, eps=val_eps, beta_weighted=True).mean(-1)
                v = v.double()
                bad = active & ~torch.isfinite(v)
                if bool(bad.any()):
                    handle_faults(bad, epoch, steps_per_epoch, good_state)
                improved = active & (v > best_val) & torch.isfinite(v)
                best_val = torch.where(improved, v, best_val)
                best_epoch = torch.where(improved, torch.full_like(best_epoch, epoch), best_epoch)
                bad_epochs = torch.where(improved, torch.zeros_like(bad_epochs), bad_epochs + 1)
                with torch.no_grad():
                    for k, p in params.items():
                        mask = improved if R is None else improved.view(
                            (R,) + (1,) * (p.dim() - 1))
                        best_state[k] = torch.where(mask, p, best_state[k])
                if patience is not None:
                    active = active & (bad_epochs < patience)
                record["val_elbo"] = torch.where(torch.isfinite(v), v, torch.zeros_like(v)
                                                 ).tolist()  # faults are in result.faults
                bar.set_postfix(val=f"{float(v.mean()):.3f}", active=record["active"])
            result.history.append(record)
            result.epochs_run = epoch + 1
            if on_epoch is not None:
                on_epoch(epoch, record)
            if not bool(active.any()):
                break
    if x_val is not None:
        with torch.no_grad():
            for k, p in params.items():  # replicas that never validated keep their last state
                p.copy_(torch.where(rows(best_epoch >= 0, p), best_state[k], p))
        result.best_epoch = best_epoch.tolist()
        result.best_val_elbo = torch.where(torch.isfinite(best_val), best_val,
                                           torch.zeros_like(best_val)).tolist()
    result.failed = failed.tolist()
    result.seconds = time.perf_counter() - start
    return result
