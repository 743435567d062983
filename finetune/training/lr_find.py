"""Learning-rate range test (``--lr-find``).

Starting from the current weights, train for a few steps while the learning
rate grows exponentially from ``lr_min`` to ``lr_max``, record the loss, then
put the weights, the optimizer state and the learning rate back exactly as
they were. The suggested rate is where the (smoothed) loss falls fastest.
"""
import copy
import dataclasses
import math

import chainer
import numpy as np

from finetune.common.fileio import atomic_write

#: Minimum number of points (up to the loss minimum) to use the slope rule.
MIN_POINTS = 3


@dataclasses.dataclass
class LRFindResult:
    """What :func:`lr_range_test` measured.

    Attributes:
        lrs (numpy.ndarray): float64 (S,), the rate used at each step taken.
        losses (numpy.ndarray): float64 (S,), raw loss of each step.
        smoothed (numpy.ndarray): float64 (S,), bias-corrected exponential
            moving average of ``losses``.
        suggested_lr (float): the proposed learning rate (NaN if no step
            ran).
        stop_reason (str): ``'completed'`` (all steps), ``'diverged'``
            (smoothed loss blew up or became NaN/inf; the last point is the
            divergent one) or ``'exhausted'`` (``batches`` ran out).
        lr_min, lr_max (float): the requested range.
    """
    lrs: np.ndarray
    losses: np.ndarray
    smoothed: np.ndarray
    suggested_lr: float
    stop_reason: str
    lr_min: float
    lr_max: float

    @property
    def diverged(self):
        """True when the test stopped because the loss blew up."""
        return self.stop_reason == 'diverged'


def lr_schedule(lr_min, lr_max, n_steps):
    """Exponentially spaced rates, float64 (n_steps,), from lr_min to lr_max.

    ``lr_i = lr_min * (lr_max / lr_min) ** (i / (n_steps - 1))``.
    """
    if not 0 < lr_min < lr_max:
        raise ValueError('need 0 < lr_min < lr_max, got %r, %r'
                         % (lr_min, lr_max))
    if n_steps < 2:
        raise ValueError('n_steps must be at least 2, got %r' % n_steps)
    return np.geomspace(lr_min, lr_max, n_steps)


def lr_range_test(loss_fn, optimizer, batches, lr_min=1e-6, lr_max=1.0,
                  n_steps=100, smooth=0.05, diverge=4.0, skip_start=5):
    """Run the range test and restore the model and optimizer afterwards.

    Step ``i`` sets the optimizer's learning rate (``hyperparam.lr``, or
    ``alpha`` for Adam-like optimizers) to ``lr_schedule(...)[i]``, clears
    the gradients, computes ``loss = loss_fn(*batch)``, back-propagates and
    calls ``optimizer.update()``. Per-parameter update rules that override
    the rate in their own hyperparameters keep it.

    Whatever happens (also on an exception or Ctrl-C), the parameters and
    persistent values of ``optimizer.target``, the optimizer state (e.g.
    MomentumSGD's ``v``, step counters) and the learning rate are restored
    bitwise; gradients are cleared. Parameters whose update rule is disabled
    (frozen layers) are never changed.

    Args:
        loss_fn (callable): ``loss_fn(*batch)`` -> scalar
            :class:`chainer.Variable`. Set ``chainer.config.train`` as
            training would.
        optimizer (chainer.Optimizer): set up on the model
            (``optimizer.target``).
        batches (iterable): yields argument tuples for ``loss_fn`` (a
            non-tuple item is passed as the single argument). Only the first
            ``n_steps`` are consumed.
        lr_min, lr_max (float): rate range, 0 < lr_min < lr_max.
        n_steps (int): at most this many steps (>= 2).
        smooth (float): weight of the newest loss in the moving average,
            in (0, 1]; 1 means no smoothing.
        diverge (float): stop once smoothed loss > ``diverge`` times the
            best smoothed loss so far.
        skip_start (int): the first steps are left out of the suggestion
            (see :func:`suggest_lr`): the moving average still averages
            only a few noisy batches there.

    Returns:
        LRFindResult: the curve and the suggested rate.
    """
    lrs_planned = lr_schedule(lr_min, lr_max, n_steps)
    if not 0 < smooth <= 1:
        raise ValueError('smooth must be in (0, 1], got %r' % smooth)
    lr_name = _lr_name(optimizer)
    snapshot = snapshot_state(optimizer)
    original_lr = getattr(optimizer.hyperparam, lr_name)
    lrs, losses, smoothed = [], [], []
    stop_reason = 'exhausted'
    beta = 1.0 - smooth
    average, best = 0.0, math.inf
    try:
        batch_iter = iter(batches)
        for i, lr in enumerate(lrs_planned):
            try:
                batch = next(batch_iter)
            except StopIteration:
                break
            setattr(optimizer.hyperparam, lr_name, float(lr))
            loss = _train_step(loss_fn, optimizer, batch)
            average = beta * average + (1.0 - beta) * loss
            value = average / (1.0 - beta ** (i + 1))
            lrs.append(float(lr))
            losses.append(loss)
            smoothed.append(value)
            if not math.isfinite(value) or value > diverge * best:
                stop_reason = 'diverged'
                break
            best = min(best, value)
        else:
            stop_reason = 'completed'
    finally:
        restore_state(optimizer, snapshot)
        setattr(optimizer.hyperparam, lr_name, original_lr)
        optimizer.target.cleargrads()
    lrs, losses, smoothed = (np.asarray(a, dtype=np.float64)
                             for a in (lrs, losses, smoothed))
    return LRFindResult(lrs=lrs, losses=losses, smoothed=smoothed,
                        suggested_lr=suggest_lr(lrs, smoothed, skip_start),
                        stop_reason=stop_reason, lr_min=float(lr_min),
                        lr_max=float(lr_max))


def suggest_lr(lrs, smoothed, skip_start=0):
    """The rate where the smoothed loss decreases fastest in log(lr).

    Only points from index ``skip_start`` up to the minimum of ``smoothed``
    (ignoring NaN/inf) are considered, and the slope is
    ``np.gradient(smoothed, log(lrs))`` over them. With fewer than
    :data:`MIN_POINTS` such points, or no negative slope, the fallback is
    the rate at the minimum divided by 10 (kept >= ``lrs[0]``).

    Args:
        lrs (numpy.ndarray): (S,) increasing rates.
        smoothed (numpy.ndarray): (S,) smoothed losses.
        skip_start (int): leading points to ignore (noisy start).

    Returns:
        float: the suggestion; NaN when no finite loss was recorded.
    """
    lrs = np.asarray(lrs, dtype=np.float64)
    smoothed = np.asarray(smoothed, dtype=np.float64)
    finite = np.isfinite(smoothed)
    if not finite.any():
        return float('nan')
    lowest = int(np.argmin(np.where(finite, smoothed, np.inf)))
    start = max(int(skip_start), 0)
    head_lrs, head = lrs[start:lowest + 1], smoothed[start:lowest + 1]
    if len(head) >= MIN_POINTS and np.isfinite(head).all():
        slope = np.gradient(head, np.log(head_lrs))
        steepest = int(np.argmin(slope))
        if slope[steepest] < 0:
            return float(head_lrs[steepest])
    return float(max(lrs[lowest] / 10.0, lrs[0]))


def snapshot_state(optimizer):
    """Deep copies of the model's and the optimizer's serialized state.

    Returns:
        dict: ``target`` and ``optimizer`` (flat dicts of NumPy arrays, as
        :class:`chainer.serializers.DictionarySerializer` writes them) and
        ``no_state`` (names of parameters whose update rule had no state
        yet -- it is created lazily by the first update).

    Raises:
        ValueError: a parameter is not initialized (lazy ``in_size=None``).
    """
    lazy = [name for name, param in optimizer.target.namedparams()
            if param.array is None]
    if lazy:
        # Restoring cannot un-initialize them: run one forward pass first.
        raise ValueError('parameters not initialized yet: %s'
                         % ', '.join(lazy))
    target = chainer.serializers.DictionarySerializer()
    target.save(optimizer.target)
    opt = chainer.serializers.DictionarySerializer()
    opt.save(optimizer)
    no_state = {name for name, param in optimizer.target.namedparams()
                if getattr(param, 'update_rule', None) is not None
                and param.update_rule.state is None}
    return {'target': copy.deepcopy(target.target),
            'optimizer': copy.deepcopy(opt.target),
            'no_state': no_state}


def restore_state(optimizer, snapshot):
    """Load a :func:`snapshot_state` back into the model and optimizer.

    Arrays are copied in place, so the restored values are bitwise equal.
    Update rules that had no state at snapshot time get none again (so the
    next update initializes it as it would have).
    """
    chainer.serializers.NpzDeserializer(snapshot['target']).load(
        optimizer.target)
    for name, param in optimizer.target.namedparams():
        if name in snapshot['no_state']:
            param.update_rule._state = None
    # Not strict: state keys of rules that had none are absent on purpose.
    chainer.serializers.NpzDeserializer(
        snapshot['optimizer'], strict=False).load(optimizer)


def plot_lr_find(result, path):
    """Write the loss-vs-learning-rate curve as a PNG.

    Log-scale x axis (learning rate), raw losses faint, smoothed loss solid,
    a dashed vertical line at ``result.suggested_lr`` with its value in the
    legend.

    Args:
        result (LRFindResult): from :func:`lr_range_test`.
        path (str): destination .png, written atomically.

    Returns:
        str: ``path``.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8, 5), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    ax.plot(result.lrs, result.losses, color='tab:blue', alpha=0.35,
            linewidth=1, label='loss')
    ax.plot(result.lrs, result.smoothed, color='tab:blue', linewidth=2,
            label='smoothed loss')
    if math.isfinite(result.suggested_lr):
        ax.axvline(result.suggested_lr, color='tab:red', linestyle='--',
                   label='suggested lr = %.3g' % result.suggested_lr)
    ax.set_xscale('log')
    ax.set_xlabel('learning rate')
    ax.set_ylabel('training loss')
    finite = result.smoothed[np.isfinite(result.smoothed)]
    if finite.size:
        # Keep the divergent tail from flattening the informative part.
        low, high = finite.min(), min(finite.max(), 2 * finite[0])
        raw = result.losses[np.isfinite(result.losses)]
        low = min(low, raw.min()) if raw.size else low
        if high > low:
            margin = 0.05 * (high - low)
            ax.set_ylim(low - margin, high + margin)
    ax.set_title('Learning-rate range test (%d steps, %s)'
                 % (len(result.lrs), result.stop_reason))
    ax.grid(True, which='both', alpha=0.3)
    ax.legend()
    fig.tight_layout()
    with atomic_write(path, suffix='.png') as tmp:
        fig.savefig(tmp, format='png')
    return path


def _lr_name(optimizer):
    """The hyperparameter holding the step size: ``lr`` or ``alpha``."""
    for name in ('lr', 'alpha'):
        try:
            getattr(optimizer.hyperparam, name)
        except AttributeError:
            continue
        return name
    raise ValueError('%s has no lr (or alpha) hyperparameter'
                     % type(optimizer).__name__)


def _train_step(loss_fn, optimizer, batch):
    """One update; returns the loss as a Python float."""
    args = batch if isinstance(batch, tuple) else (batch,)
    optimizer.target.cleargrads()
    loss = loss_fn(*args)
    loss.backward()
    optimizer.update()
    return float(loss.array)
