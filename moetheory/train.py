"""Training loops that run in C: `train` on fixed data, `train_online` on fresh samples.

The loop runs in chunks of at most `chunk_seconds` of wall time inside one C call with the GIL
released; between chunks the progress bar moves, snapshots are taken, the callback runs and
Ctrl-C is honoured. Chunking never changes the result: the optimizer and RNG state live in C.
"""
import fnmatch
import signal
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import numpy as np

from . import _config, _core, samplers
from .model import FlatModel

# The names users pass, as the C core's optimizer (mt_opt_names) and whether weight decay is
# decoupled: "gd" is "sgd" on the full batch, "adamw" Adam with decoupled decay.
_OPTIMIZERS = {"sgd": ("sgd", False), "gd": ("sgd", False), "momentum": ("momentum", False),
               "nesterov": ("nesterov", False), "adam": ("adam", False),
               "adamw": ("adam", True)}
_SCHEDULE_OPTIONS = ("step_size", "gamma", "total_steps", "lr_min", "t0")


@dataclass
class History:
    """What a training run recorded.

    Attributes
    ----------
    losses : ndarray, shape (steps,)
        Each step's batch loss, before its update.
    record_steps : ndarray, shape (R,)
        Steps (number of updates done) at which snapshots were taken, 0 included.
    snapshots : dict of str to ndarray, each (R, *shape)
        Copies of the recorded named parameters at `record_steps`.
    seconds : float
        Wall time of the run.
    interrupted : bool
        True when the run stopped early (Ctrl-C or the callback returned False).
    """
    losses: np.ndarray
    record_steps: np.ndarray
    snapshots: dict = field(default_factory=dict)
    seconds: float = 0.0
    interrupted: bool = False

    @property
    def steps(self):
        return len(self.losses)


def _patterns(name, patterns):
    """A sequence of parameter-name patterns (a single string is one pattern)."""
    if patterns is None:
        return []
    if isinstance(patterns, str):
        return [patterns]
    if not isinstance(patterns, Iterable) or isinstance(patterns, Mapping):
        raise TypeError(f"{name} must be a sequence of parameter-name patterns, got {patterns!r}")
    patterns = list(patterns)
    for p in patterns:
        if not isinstance(p, str):
            raise TypeError(f"{name} must hold parameter-name patterns (str), got {p!r}")
    return patterns


def _lr_scale(model, lr_groups, frozen):
    """Per-parameter learning-rate multipliers from name patterns (fnmatch), or None."""
    if lr_groups is not None and not isinstance(lr_groups, Mapping):
        raise TypeError(f"lr_groups must be a dict of parameter-name pattern to factor, got "
                        f"{lr_groups!r}")
    frozen = _patterns("frozen", frozen)
    if not lr_groups and not frozen:
        return None
    scale = np.ones(model.n_params)
    names = list(model.params)
    for pattern, factor in (lr_groups or {}).items():
        if not isinstance(pattern, str):
            raise TypeError(f"lr_groups keys must be parameter-name patterns (str), got "
                            f"{pattern!r}")
        factor = _config.real(f"lr_groups[{pattern!r}]", factor, low=0)
        hits = fnmatch.filter(names, pattern)
        if not hits:
            raise ValueError(f"lr_groups pattern {pattern!r} matches no parameter of {names}")
        for name in hits:
            scale[model.param_slice(name)] = factor
    for pattern in frozen:
        hits = fnmatch.filter(names, pattern)
        if not hits:
            raise ValueError(f"frozen pattern {pattern!r} matches no parameter of {names}")
        for name in hits:
            scale[model.param_slice(name)] = 0.0
    return scale


def _optimizer_args(optimizer, lr, momentum, betas, eps, weight_decay, schedule, steps,
                    schedule_options):
    """The Trainer's optimizer keywords. Values go to the C core as given: its converters and
    mt_opt_config_validate say which one is out of range."""
    if optimizer not in _OPTIMIZERS:
        raise ValueError(f"optimizer must be one of {sorted(_OPTIMIZERS)}, got {optimizer!r}")
    kind, decoupled = _OPTIMIZERS[optimizer]
    if momentum is None:
        momentum = 0.9 if optimizer in ("momentum", "nesterov") else 0.0
    if isinstance(betas, (str, bytes)) or not isinstance(betas, Iterable):
        raise TypeError(f"betas must be a pair (beta1, beta2), got {betas!r}")
    betas = tuple(betas)
    if len(betas) != 2:
        raise ValueError(f"betas must be a pair (beta1, beta2), got {len(betas)} values")
    if schedule_options is not None and not isinstance(schedule_options, Mapping):
        raise TypeError(f"schedule_options must be a dict, got {schedule_options!r}")
    opts = dict(schedule_options or {})
    unknown = set(opts) - set(_SCHEDULE_OPTIONS)
    if unknown:
        raise ValueError(f"unknown schedule_options {sorted(map(str, unknown))}; known: "
                         f"{', '.join(_SCHEDULE_OPTIONS)}")
    return dict(optimizer=kind, lr=lr, momentum=momentum, beta1=betas[0], beta2=betas[1],
                eps=eps, weight_decay=weight_decay, decoupled=decoupled, schedule=schedule,
                step_size=opts.get("step_size", 1), gamma=opts.get("gamma", 1.0),
                total_steps=opts.get("total_steps", max(steps, 1)),
                lr_min=opts.get("lr_min", 0.0), t0=opts.get("t0", 1.0))


def _progress_bar(progress, total, desc):
    if not progress:
        return None
    from tqdm.auto import tqdm
    return tqdm(total=total, desc=desc, unit="step", leave=False)


def _run_options(model, record_every, record, progress, callback):
    """The checked options of _run (checked before the trainer is made)."""
    names = _patterns("record", record)
    for name in names:
        if name not in model.params:
            raise ValueError(f"record: unknown parameter {name!r}; known: {list(model.params)}")
    if record_every is not None:
        record_every = _config.integer("record_every", record_every, low=1)
    if callback is not None and not callable(callback):
        raise TypeError(f"callback must be callable or None, got {callback!r}")
    return record_every, names, _config.boolean("progress", progress), callback


def _run(model, trainer, steps, options, chunk_seconds, desc):
    record_every, names, progress, callback = options
    snaps = {name: [model.params[name].copy()] for name in names}
    record_steps = [0]
    losses = []
    done = 0
    interrupted = False
    bar = _progress_bar(progress, steps, desc)
    start = time.perf_counter()
    # Ctrl-C only sets a flag while a chunk runs; the loop raises KeyboardInterrupt itself
    # between chunks, so the history always matches the steps applied to the model.
    pending = []
    in_main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGINT, lambda signum, frame: pending.append(signum)) \
        if in_main else None
    try:
        while done < steps:
            limit = steps - done
            if record_every:
                limit = min(limit, record_every - done % record_every)
            chunk = trainer.run(limit, chunk_seconds)
            losses.append(chunk)
            done += len(chunk)
            if bar is not None:
                bar.update(len(chunk))
            if record_every and (done % record_every == 0 or done == steps):
                record_steps.append(done)
                for name in names:
                    snaps[name].append(model.params[name].copy())
            if pending:
                raise KeyboardInterrupt
            if callback is not None and callback(done, chunk) is False:
                interrupted = True
                break
    except KeyboardInterrupt as exc:
        exc.history = _history(losses, record_steps, snaps, start, True)
        raise
    finally:
        if in_main:
            signal.signal(signal.SIGINT, previous)
        if bar is not None:
            bar.close()
    return _history(losses, record_steps, snaps, start, interrupted)


def _history(losses, record_steps, snaps, start, interrupted):
    return History(losses=np.concatenate(losses) if losses else np.empty(0),
                   record_steps=np.asarray(record_steps),
                   snapshots={k: np.stack(v) for k, v in snaps.items()},
                   seconds=time.perf_counter() - start, interrupted=interrupted)


def train(model, X, y, *, optimizer="adam", lr=1e-3, steps=1000, batch_size=None, loss="mse",
          momentum=None, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, schedule="constant",
          schedule_options=None, lr_groups=None, frozen=(), project=None, record_every=None,
          record=(), seed=0, progress=True, callback=None, chunk_seconds=0.05, aux_switch=0.0,
          aux_z=0.0):
    """Train `model` in place on fixed data, the whole loop in C.

    Parameters
    ----------
    model : MoE or DeepMoE
    X : array_like, shape (n, d_in)
    y : array_like, shape (n, d_out), or (n,) when d_out == 1
    optimizer : {"adam", "adamw", "sgd", "gd", "momentum", "nesterov"}
        PyTorch's update rules (see csrc/mt_optim.h). "gd" is "sgd" on the full batch.
    lr : float
        Base learning rate. The defaults, Adam at 1e-3 (``torch.optim.Adam``'s), serve the
        usual use of fixed data: fitting a data set to a low loss, where Adam's per-parameter
        step scaling works across models and widths without tuning. :func:`train_online`
        defaults to plain SGD at 1e-2 instead: there the optimizer is part of the process the
        theory analyses (see its docstring).
    steps : int
        Number of updates.
    batch_size : int, optional
        Rows per step, drawn without replacement in a fresh random order each epoch; None uses
        the whole data set every step.
    loss : {"mse"}
    momentum : float, optional
        Momentum of "momentum" and "nesterov" (default 0.9).
    betas, eps : Adam's parameters.
    weight_decay : float
        L2 decay, coupled (added to the gradient) except for "adamw" (decoupled).
    schedule : {"constant", "step", "cosine", "inverse_time"}
    schedule_options : dict, optional
        step_size and gamma ("step"), total_steps (default `steps`) and lr_min ("cosine"),
        t0 ("inverse_time": lr / (1 + t / t0)).
    lr_groups : dict of str to float, optional
        Learning-rate multipliers by parameter-name pattern, e.g. ``{"router.*": 0.1}``.
    frozen : sequence of str
        Parameter-name patterns that never change.
    project : {None, "sphere"}
        "sphere": after each step renormalise each router weight row and each expert
        first-layer row to unit norm.
    record_every : int, optional
        Take snapshots of the `record` parameters every this many steps.
    record : sequence of str
        Names of parameters to snapshot (``"router.weight"``, ...).
    seed : int
        Seed of the loop's RNG (mini-batch order).
    progress : bool
        Show a tqdm progress bar.
    callback : callable, optional
        ``callback(steps_done, chunk_losses)`` after each chunk; returning False stops the run.
    chunk_seconds : float
        Wall time of one C chunk between progress updates.
    aux_switch, aux_z : float
        Coefficients of the auxiliary router losses added to the training loss (MoE only; see
        `MoE.loss_and_grad`). The recorded losses include them.

    Returns
    -------
    History

    Raises
    ------
    KeyboardInterrupt
        On Ctrl-C, within about `chunk_seconds`; the model holds the last completed step and
        the exception's ``history`` attribute the run so far.
    FloatingPointError
        When a loss or gradient stops being finite (the model keeps the last finite step).
    """
    steps = _config.integer("steps", steps, low=0)
    common = _common(model, loss, steps, optimizer, lr, momentum, betas, eps, weight_decay,
                     schedule, schedule_options, lr_groups, frozen, project, seed, aux_switch,
                     aux_z)
    options = _run_options(model, record_every, record, progress, callback)
    if batch_size is not None:
        batch_size = _config.integer("batch_size", batch_size, low=1)
    trainer = _core.Trainer(model._layer, model.theta, X=X, y=y, batch_size=batch_size or 0,
                            **common)
    return _run(model, trainer, steps, options, chunk_seconds, "train")


def train_online(model, sampler, *, batch_size, steps, optimizer="sgd", lr=1e-2, loss="mse",
                 momentum=None, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0,
                 schedule="constant", schedule_options=None, lr_groups=None, frozen=(),
                 project=None, record_every=None, record=(), seed=0, progress=True,
                 callback=None, chunk_seconds=0.05, aux_switch=0.0, aux_z=0.0):
    """Online training: every step draws a fresh batch in C from `sampler` (inputs) and its
    teacher (targets plus noise). Arguments as in `train`; `sampler` is one of
    `moetheory.samplers.Gaussian`, `Uniform`, `Grid` or `GaussianMixture` (or a task of
    `moetheory.tasks`). The first step's batch is `moetheory.samplers.draw(sampler,
    batch_size, seed)`.

    The defaults differ from `train`'s (Adam, 1e-3) on purpose: online SGD on fresh batches is
    the dynamics the feature-learning theories study (Paper 000's soft-routed MoE, Paper 001's
    clustered single-index task, the single-index SGD literature), so the default optimizer is
    plain SGD, and 1e-2 is the step of Paper 000's reproduction (Paper 001's scales its step
    with d: 0.02 * 16 / d). Pass ``optimizer=`` and ``lr=`` to run anything else.

    Returns
    -------
    History
    """
    steps = _config.integer("steps", steps, low=0)
    common = _common(model, loss, steps, optimizer, lr, momentum, betas, eps, weight_decay,
                     schedule, schedule_options, lr_groups, frozen, project, seed, aux_switch,
                     aux_z)
    options = _run_options(model, record_every, record, progress, callback)
    batch_size = _config.integer("batch_size", batch_size, low=1)
    data = samplers.core_arguments(sampler)
    if sampler.d != model.config["d_in"]:
        raise ValueError(f"sampler.d must equal the model's d_in = {model.config['d_in']}, "
                         f"got {sampler.d}")
    trainer = _core.Trainer(model._layer, model.theta, batch_size=batch_size, **data, **common)
    return _run(model, trainer, steps, options, chunk_seconds, "train_online")


def _common(model, loss, steps, optimizer, lr, momentum, betas, eps, weight_decay, schedule,
            schedule_options, lr_groups, frozen, project, seed, aux_switch, aux_z):
    """The Trainer keywords train and train_online share, after the checks only Python can
    make (types, names, patterns); the C core checks every value it computes with."""
    if not isinstance(model, FlatModel):
        raise TypeError(f"model must be a moetheory.MoE or DeepMoE, got {type(model).__name__}")
    if loss != "mse":
        raise ValueError(f"loss must be 'mse', got {loss!r}")
    if project not in (None, "sphere"):
        raise ValueError(f"project must be None or 'sphere', got {project!r}")
    return dict(lr_scale=_lr_scale(model, lr_groups, frozen), seed=seed,
                project=project == "sphere", aux_switch=aux_switch, aux_z=aux_z,
                temperature=model._temperature,
                **_optimizer_args(optimizer, lr, momentum, betas, eps, weight_decay, schedule,
                                  steps, schedule_options))
