"""The patched chainer (patches/chainer-7.8.1-finetune.patch) on this Python.

These fail on the unpatched chainer 7.8.1: under Python 3.12+ it does not
import, and under NumPy 2 its reporter's means accumulate in float32.
"""
import json
import math
import subprocess
import sys

import numpy as np

import chainer
import chainer.functions as F
from chainer import reporter
from chainer import serializers


def _values(n=20000, seed=0):
    # loss-like float32 values, as a training loop reports them
    rng = np.random.RandomState(seed)
    return (rng.gamma(2.0, 0.7, size=n) + 0.01).astype(np.float32)


def _reference_mean(values):
    return math.fsum(float(v) for v in values) / len(values)


def test_import_chainer_in_a_fresh_process_is_the_patched_build():
    code = ('import json, importlib.metadata as m, chainer, chainer.functions,'
            ' chainer.distributions, chainermn, onnx_chainer;'
            ' print(json.dumps([chainer.__version__, m.version("chainer")]))')
    out = subprocess.run([sys.executable, '-c', code], capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    module_version, dist_version = json.loads(out.stdout.splitlines()[-1])
    assert module_version.startswith('7.8.1+finetune.'), module_version
    assert dist_version == module_version


def test_summary_mean_is_float64_accurate():
    values = _values()
    summary = reporter.Summary()
    for v in values:
        summary.add(v)             # NumPy float32 scalars
    mean = summary.compute_mean()
    assert np.asarray(mean).dtype == np.float64
    ref = _reference_mean(values)
    assert abs(float(mean) - ref) <= 1e-12 * ref

    mean, std = summary.make_statistics()
    ref_std = math.sqrt(math.fsum(float(v) ** 2 for v in values)
                        / len(values) - ref * ref)
    assert abs(float(std) - ref_std) <= 1e-9 * ref_std


def test_dict_summary_weighted_mean_is_float64_accurate():
    values = _values(seed=1)
    weights = (np.arange(len(values)) % 3).astype(np.float32) + 0.5
    summary = reporter.DictSummary()
    for v, w in zip(values, weights):
        summary.add({'main/weighted': (np.array(v), w)})
    mean = float(summary.compute_mean()['main/weighted'])
    ref = (math.fsum(float(v) * float(w) for v, w in zip(values, weights))
           / math.fsum(float(w) for w in weights))
    assert abs(mean - ref) <= 1e-12 * ref


def test_dict_summary_means_are_float64_accurate_and_resume_bitwise(tmp_path):
    """What LogReport does with reported Variables, across a snapshot."""
    values = _values(seed=2)
    accuracy = (values > 1).astype(np.float32)

    def feed(summary, lo, hi):
        for v, a in zip(values[lo:hi], accuracy[lo:hi]):
            summary.add({'main/loss': chainer.Variable(np.array(v)),
                         'main/accuracy': np.array(a)})

    whole = reporter.DictSummary()
    feed(whole, 0, len(values))
    means = whole.compute_mean()
    ref = _reference_mean(values)
    assert abs(float(means['main/loss']) - ref) <= 1e-12 * ref
    assert float(means['main/accuracy']) == accuracy.sum() / len(values)

    half = len(values) // 2
    first = reporter.DictSummary()
    feed(first, 0, half)
    serializers.save_npz(str(tmp_path / 'summary.npz'), first)
    resumed = reporter.DictSummary()
    serializers.load_npz(str(tmp_path / 'summary.npz'), resumed)
    feed(resumed, half, len(values))
    resumed_means = resumed.compute_mean()
    for key in means:
        assert float(resumed_means[key]) == float(means[key]), key


def test_numpy2_fixed_call_sites_run():
    # categorical.log_prob (meshgrid tuple) and as_strided (np.sctypes)
    p = np.full((2, 3), 1.0 / 3.0, dtype=np.float32)
    log_p = chainer.distributions.Categorical(p).log_prob(
        np.array([0, 2], dtype=np.int32))
    np.testing.assert_allclose(log_p.array, np.log(p[:, 0]), rtol=1e-6)

    x = chainer.Variable(np.arange(4, dtype=np.float32))
    y = F.as_strided(x, (4,), (-1,), 3)
    np.testing.assert_array_equal(y.array, [3, 2, 1, 0])
    y.grad = np.ones(4, dtype=np.float32)
    y.backward()
    np.testing.assert_array_equal(x.grad, np.ones(4, dtype=np.float32))
