"""Learning-rate range test on a tiny classifier: curve, advice, restore."""
import copy
import math

import chainer
import chainer.functions as F
import chainer.links as L
import numpy as np
import pytest
from PIL import Image

from finetune.training import lr_find
class TinyNet(chainer.Chain):
    """2 -> 16 (ReLU) -> 3 classifier with fixed initial weights."""

    def __init__(self, seed=0):
        super().__init__()
        rng = np.random.RandomState(seed)
        with self.init_scope():
            self.l1 = L.Linear(2, 16, initialW=rng.normal(
                size=(16, 2)).astype(np.float32))
            self.l2 = L.Linear(16, 3, initialW=rng.normal(
                scale=0.3, size=(3, 16)).astype(np.float32))

    def forward(self, x):
        return self.l2(F.relu(self.l1(x)))


def blobs(n=150, seed=0):
    """Three Gaussian blobs, separable but for a few points at the edges.

    Returns x (n, 2) float32 and t (n,) int32. The slight overlap makes a
    huge learning rate blow the loss up (on perfectly separated data the
    loss just goes to 0).
    """
    rng = np.random.RandomState(seed)
    centers = np.array([[3, 0], [-3, 3], [-3, -3]], dtype=np.float32)
    t = rng.randint(0, 3, size=n).astype(np.int32)
    x = centers[t] + rng.normal(scale=1.0, size=(n, 2)).astype(np.float32)
    return x, t


def batches(x, t, size=30, seed=1):
    """Endless shuffled minibatches as (x, t) tuples."""
    rng = np.random.RandomState(seed)
    while True:
        order = rng.permutation(len(t))
        for i in range(0, len(t) - size + 1, size):
            idx = order[i:i + size]
            yield x[idx], t[idx]


def state_arrays(model, optimizer):
    """Independent copies of every parameter and update-rule state array."""
    out = {}
    for name, param in model.namedparams():
        out['param' + name] = param.array.copy()
        state = param.update_rule.state or {}
        for key, value in state.items():
            out['state%s/%s' % (name, key)] = value.copy()
        out['t' + name] = param.update_rule.t
    out['optimizer/t'] = optimizer.t
    return out


def assert_bitwise_equal(before, after):
    assert sorted(before) == sorted(after)
    for key, value in before.items():
        other = after[key]
        if isinstance(value, np.ndarray):
            assert value.dtype == other.dtype and value.shape == other.shape
            assert value.tobytes() == other.tobytes(), key
        else:
            assert value == other, key


def make(optimizer_cls=chainer.optimizers.MomentumSGD, **kwargs):
    model = TinyNet()
    optimizer = optimizer_cls(**kwargs)
    optimizer.setup(model)
    return model, optimizer


def loss_of(model):
    def loss_fn(x, t):
        return F.softmax_cross_entropy(model(x), t)
    return loss_fn


def warm_up(model, optimizer, data, steps=3):
    """A few real updates so the momentum state is non-zero."""
    it = batches(*data, seed=7)
    for _ in range(steps):
        x, t = next(it)
        model.cleargrads()
        loss_of(model)(x, t).backward()
        optimizer.update()


@pytest.mark.parametrize('optimizer_cls, kwargs, lr_name', [
    (chainer.optimizers.MomentumSGD, {'lr': 0.01, 'momentum': 0.9}, 'lr'),
    (chainer.optimizers.Adam, {'alpha': 0.002}, 'alpha')])
def test_range_test_restores_everything(optimizer_cls, kwargs, lr_name):
    data = blobs()
    model, optimizer = make(optimizer_cls, **kwargs)
    warm_up(model, optimizer, data)
    assert np.abs(next(iter(model.l2.W.update_rule.state.values()))).max() > 0
    before = state_arrays(model, optimizer)
    original_lr = getattr(optimizer.hyperparam, lr_name)

    seen_lrs, w2 = [], []
    base = loss_of(model)

    def loss_fn(x, t):
        seen_lrs.append(getattr(optimizer.hyperparam, lr_name))
        w2.append(model.l2.W.array.copy())
        return base(x, t)

    result = lr_find.lr_range_test(loss_fn, optimizer, batches(*data),
                                   lr_min=1e-4, lr_max=0.1, n_steps=25)
    assert result.stop_reason == 'completed'
    expected_lrs = 1e-4 * (0.1 / 1e-4) ** (np.arange(25) / 24)
    np.testing.assert_allclose(result.lrs, expected_lrs, rtol=1e-12)
    np.testing.assert_array_equal(seen_lrs, result.lrs)
    assert np.isfinite(result.losses).all() and len(result.losses) == 25
    # It really trained: weights moved during the run.
    assert np.abs(w2[-1] - before['param/l2/W']).max() > 1e-3
    # Smoothed curve is an independent bias-corrected EMA of the raw one.
    avg, expected = 0.0, []
    for i, loss in enumerate(result.losses):
        avg = 0.95 * avg + 0.05 * loss
        expected.append(avg / (1 - 0.95 ** (i + 1)))
    np.testing.assert_allclose(result.smoothed, expected, rtol=1e-12)
    assert result.smoothed[0] == pytest.approx(result.losses[0], rel=1e-12)

    assert_bitwise_equal(before, state_arrays(model, optimizer))
    assert getattr(optimizer.hyperparam, lr_name) == original_lr
    assert all(p.grad is None for p in model.params())


def test_stops_on_divergence_and_suggests_below_it():
    data = blobs()
    model, optimizer = make(lr=0.01, momentum=0.9)
    result = lr_find.lr_range_test(loss_of(model), optimizer, batches(*data),
                                   lr_min=1e-4, lr_max=1e3, n_steps=100)
    assert result.stop_reason == 'diverged' and result.diverged
    assert 5 < len(result.lrs) < 100
    last = result.smoothed[-1]
    assert not math.isfinite(last) or last > 4 * np.nanmin(
        result.smoothed[:-1])
    assert 1e-4 <= result.suggested_lr <= 1e3
    assert result.suggested_lr < result.lrs[-1]
    assert result.suggested_lr <= result.lrs[np.nanargmin(result.smoothed)]
    assert result.smoothed[np.nanargmin(result.smoothed)] < result.smoothed[0]
    # what the suggestion is for: plain training at it learns, faster than
    # at a rate 100x lower, and does not blow up
    final = {}
    for lr in (result.suggested_lr, result.suggested_lr / 100):
        model, optimizer = make(lr=lr, momentum=0.9)
        loss_fn = loss_of(model)
        stream = batches(*data)
        for _ in range(30):
            x, t = next(stream)
            model.cleargrads()
            loss = loss_fn(x, t)
            loss.backward()
            optimizer.update()
        final[lr] = float(loss_fn(*data).array)
    first_loss = float(loss_of(make()[0])(*data).array)
    assert math.isfinite(final[result.suggested_lr])
    assert final[result.suggested_lr] < 0.8 * first_loss
    assert final[result.suggested_lr] < final[result.suggested_lr / 100]


def test_fresh_optimizer_state_stays_uninitialized():
    """Without prior updates, the next real update matches a fresh copy."""
    data = blobs()
    model, optimizer = make(lr=0.05, momentum=0.9)
    twin_model = copy.deepcopy(model)
    twin_opt = chainer.optimizers.MomentumSGD(lr=0.05, momentum=0.9)
    twin_opt.setup(twin_model)
    assert all(p.update_rule.state is None for p in model.params())

    lr_find.lr_range_test(loss_of(model), optimizer, batches(*data),
                          lr_min=1e-3, lr_max=1.0, n_steps=10)
    assert all(p.update_rule.state is None for p in model.params())
    assert optimizer.t == 0

    x, t = next(batches(*data, seed=5))
    for m, opt in ((model, optimizer), (twin_model, twin_opt)):
        m.cleargrads()
        loss_of(m)(x, t).backward()
        opt.update()
    assert_bitwise_equal(state_arrays(twin_model, twin_opt),
                         state_arrays(model, optimizer))


def test_frozen_link_is_never_changed():
    data = blobs()
    model, optimizer = make(lr=0.01, momentum=0.9)
    model.l1.disable_update()
    frozen = {n: p.array.copy() for n, p in model.l1.namedparams()}
    before = state_arrays(model, optimizer)
    checks = []
    base = loss_of(model)

    def loss_fn(x, t):
        now = dict(model.l1.namedparams())
        checks.append(all(now[n].array.tobytes() == a.tobytes()
                          for n, a in frozen.items()))
        checks.append(not np.array_equal(model.l2.W.array,
                                         before['param/l2/W']))
        return base(x, t)

    lr_find.lr_range_test(loss_fn, optimizer, batches(*data),
                          lr_min=1e-3, lr_max=1.0, n_steps=12)
    frozen_ok, l2_moved = checks[0::2], checks[1::2]
    assert len(frozen_ok) == 12 and all(frozen_ok)
    assert any(l2_moved)  # the trainable layer did learn
    assert_bitwise_equal(before, state_arrays(model, optimizer))


def test_restores_after_exception():
    data = blobs()
    model, optimizer = make(lr=0.01, momentum=0.9)
    warm_up(model, optimizer, data)
    before = state_arrays(model, optimizer)
    base, calls = loss_of(model), []

    def loss_fn(x, t):
        calls.append(1)
        if len(calls) == 6:
            raise RuntimeError('boom')
        return base(x, t)

    with pytest.raises(RuntimeError, match='boom'):
        lr_find.lr_range_test(loss_fn, optimizer, batches(*data),
                              lr_min=1e-3, lr_max=1.0, n_steps=20)
    assert_bitwise_equal(before, state_arrays(model, optimizer))
    assert optimizer.lr == 0.01


def test_stops_when_batches_run_out():
    data = blobs()
    model, optimizer = make(lr=0.01)
    few = [next(batches(*data, seed=s)) for s in range(4)]
    result = lr_find.lr_range_test(loss_of(model), optimizer, few,
                                   lr_min=1e-3, lr_max=1.0, n_steps=50)
    assert result.stop_reason == 'exhausted' and len(result.lrs) == 4


def test_suggest_lr_on_known_curve():
    lrs = np.geomspace(1e-5, 1.0, 51)
    x = np.log10(lrs)
    # Falls fastest at x = -3 (symmetric tanh), minimum near x = -1.
    curve = 2.0 - np.tanh(2 * (x + 3)) + 3 * np.maximum(x + 1, 0) ** 2
    assert lr_find.suggest_lr(lrs, curve) == pytest.approx(1e-3)
    # A noisy start is ignored only when skipped.
    noisy = curve.copy()
    noisy[0] += 10.0
    assert lr_find.suggest_lr(lrs, noisy) == lrs[0]
    assert lr_find.suggest_lr(lrs, noisy, skip_start=5) == pytest.approx(
        1e-3)
    # A steeper drop after the minimum (x = -1, index 40) is ignored.
    assert np.argmin(curve) == 40
    spiky = curve.copy()
    spiky[45] = 50.0
    assert np.argmin(spiky) == 40
    assert lr_find.suggest_lr(lrs, spiky) == pytest.approx(1e-3)
    # Too few points before the minimum: minimum's lr / 10, kept in range.
    rising = np.linspace(1.0, 5.0, 51)
    assert lr_find.suggest_lr(lrs, rising) == lrs[0]
    three = lrs[[10, 30, 50]]  # 1e-4, 1e-2, 1
    assert lr_find.suggest_lr(three, np.array([2.0, 1.0, 3.0])) == (
        pytest.approx(1e-3))
    # No negative slope up to the minimum: same fallback.
    flat = np.r_[np.full(10, 1.0), np.linspace(1.0, 9.0, 41)]
    assert lr_find.suggest_lr(lrs, flat) == lrs[0]
    assert math.isnan(lr_find.suggest_lr(lrs[:1], np.array([np.nan])))


def test_rejects_bad_range():
    model, optimizer = make()
    with pytest.raises(ValueError):
        lr_find.lr_range_test(loss_of(model), optimizer, [], lr_min=1.0,
                              lr_max=0.1)


def test_plot_written(tmp_path):
    data = blobs()
    model, optimizer = make(lr=0.01, momentum=0.9)
    result = lr_find.lr_range_test(loss_of(model), optimizer, batches(*data),
                                   lr_min=1e-4, lr_max=1e3, n_steps=60)
    path = str(tmp_path / 'plots' / 'lr_find.png')
    assert lr_find.plot_lr_find(result, path) == path
    with Image.open(path) as im:
        im.load()
        assert im.format == 'PNG' and im.size == (800, 500)
        # Not blank: the curves and the suggestion line are drawn.
        assert len(np.unique(np.asarray(im.convert('RGB')).reshape(-1, 3),
                             axis=0)) > 20
    assert [p.name for p in (tmp_path / 'plots').iterdir()] == [
        'lr_find.png']
