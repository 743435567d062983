"""Benchmark-only variants of Chainer's CPU kernels, applied by monkeypatching.

Nothing here is imported by the project. The benchmarks apply these patches
to measure, side by side with the unmodified code, what a change to the
project (or a tuning knob) would gain. Every number printed with a variant
applied is labelled as such.

Variants (each can be applied alone; ``apply(names)`` applies several):

``mallopt``
    glibc ``mallopt`` from Python (ctypes): keep freed memory in the heap
    (no ``munmap``/trim, no page faults on the next call). The same effect
    as ``MALLOC_MMAP_THRESHOLD_``/``MALLOC_TRIM_THRESHOLD_``/``MALLOC_TOP_PAD_``
    but settable by the program itself at start-up.
``conv``
    ``Convolution2DFunction.forward_cpu`` with im2col written straight in
    GEMM order (C, kh, kw, N, oH, oW): one copy of the im2col matrix
    instead of two (Chainer's grouped path transposes the whole column
    matrix with ``reshape``; its ungrouped path lets ``tensordot`` do the
    same), one GEMM per group, output kept channel-major so the next
    layer's im2col reads contiguous planes.
``pool``
    Caffe max pooling (AlexNet's 3x3/2, no padding) as 9 ``np.maximum`` over
    strided views instead of im2col + ``max`` + ``argmax``; the backward
    recomputes the first-max mask from x and y (same tie-break as argmax).
    Shipped on 2026-11-24 as ``TiledMaxPooling2D`` in models/functions.py
    (without the threads), so from then on "as shipped" already has it.
``lrn``
    ``LocalResponseNormalization.forward_cpu`` with in-place arithmetic and
    ``u ** -0.75`` computed as ``1 / (sqrt(u) * sqrt(sqrt(u)))`` (beta 0.75
    only; other betas use Chainer's code). Keeps ``unit_scale``/``scale``
    so Chainer's backward is unchanged.
``threads``
    the memory-bound loops of the ``conv`` (im2col, split by channel),
    ``pool`` and ``lrn`` (split by image) variants run on
    ``OMP_NUM_THREADS`` Python threads (NumPy releases the GIL in copies and
    ufuncs), as PyTorch spreads its elementwise kernels over its threads.
    Only has an effect together with those variants.
``detach``
    ``FineTuneNet.features`` returns a plain array, so the first trained
    layer (fc6) does not compute a gradient for its frozen input (Chainer
    computes gx of fc6, (N, 9216), and throws it away). finetune does the
    same since commit 99419df; the variant then changes nothing.
"""
import concurrent.futures
import ctypes
import ctypes.util
import os

import chainer
import numpy as np
from chainer import function_node
from chainer.functions.connection import convolution_2d as _conv_mod
from chainer.functions.normalization import (
    local_response_normalization as _lrn_mod)

ALL = ('mallopt', 'conv', 'pool', 'lrn', 'threads', 'detach')

_ORIG = {}

# glibc mallopt parameters (malloc.h)
M_TRIM_THRESHOLD = -1
M_TOP_PAD = -2
M_MMAP_THRESHOLD = -3

# Environment for a child process with the equivalent glibc tuning.
MALLOC_ENV = {'MALLOC_MMAP_THRESHOLD_': str(2 ** 31 - 1),
              'MALLOC_TRIM_THRESHOLD_': str(2 ** 31 - 1),
              'MALLOC_TOP_PAD_': str(256 << 20)}


def mallopt_tuning():
    """Apply MALLOC_ENV's settings in this process; returns mallopt's
    results (1 = accepted) or None when libc has no mallopt."""
    name = ctypes.util.find_library('c') or 'libc.so.6'
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return None
    return [mallopt(M_MMAP_THRESHOLD, ctypes.c_int(2 ** 31 - 1)),
            mallopt(M_TRIM_THRESHOLD, ctypes.c_int(2 ** 31 - 1)),
            mallopt(M_TOP_PAD, ctypes.c_int(256 << 20))]


# ---------------------------------------------------------------- threads
_POOL = {'threads': 1, 'executor': None}


def _split(n, parts):
    """[(start, stop)...]: ``range(n)`` in ``parts`` nearly equal pieces."""
    parts = max(1, min(parts, n))
    bounds = [n * k // parts for k in range(parts + 1)]
    return list(zip(bounds[:-1], bounds[1:]))


def _parallel(fn, n):
    """Run ``fn(start, stop)`` over ``range(n)`` split between the threads."""
    pieces = _split(n, _POOL['threads'])
    if len(pieces) == 1:
        fn(0, n)
        return
    if _POOL['executor'] is None:
        _POOL['executor'] = concurrent.futures.ThreadPoolExecutor(
            _POOL['threads'])
    for future in [_POOL['executor'].submit(fn, a, b) for a, b in pieces]:
        future.result()


# ---------------------------------------------------------------- conv
def _im2col_gemm_order(x, kh, kw, sy, sx, ph, pw):
    """x (N, C, H, W) -> col (C, kh, kw, N, oH, oW), C-contiguous."""
    n, c, h, w = x.shape
    oh = (h + 2 * ph - kh) // sy + 1
    ow = (w + 2 * pw - kw) // sx + 1
    xt = x.transpose(1, 0, 2, 3)  # contiguous when x came from _fast_conv
    padded = None
    if ph or pw:
        padded = np.empty((c, n, h + 2 * ph, w + 2 * pw), x.dtype)
    col = np.empty((c, kh, kw, n, oh, ow), x.dtype)

    def pad(c0, c1):
        dst = padded[c0:c1]
        if ph:
            dst[:, :, :ph] = 0
            dst[:, :, h + ph:] = 0
        if pw:
            dst[:, :, :, :pw] = 0
            dst[:, :, :, w + pw:] = 0
        dst[:, :, ph:ph + h, pw:pw + w] = xt[c0:c1]

    if padded is not None:
        _parallel(pad, c)
        xt = padded

    if c >= 4 * _POOL['threads']:
        def fill(c0, c1):  # many channels: split them between threads
            for j in range(kh):
                for i in range(kw):
                    col[c0:c1, j, i] = xt[c0:c1, :, j:j + sy * oh:sy,
                                          i:i + sx * ow:sx]
        _parallel(fill, c)
    else:
        def fill_rows(u0, u1):  # few channels (conv1): split (c, j) pairs
            for u in range(u0, u1):
                ci, j = divmod(u, kh)
                for i in range(kw):
                    col[ci, j, i] = xt[ci, :, j:j + sy * oh:sy,
                                       i:i + sx * ow:sx]
        _parallel(fill_rows, c * kh)
    return col, oh, ow


def _fast_conv_forward_cpu(self, inputs):
    simple = (not self.cover_all and self.dy == 1 and self.dx == 1 and
              not self.cudnn_fast and
              not chainer.backends.intel64.should_use_ideep('>=auto'))
    if not simple:
        return _ORIG['conv'](self, inputs)
    self._check_input_layouts_all_standard()
    self.retain_inputs((0, 1))
    x, W = inputs[:2]
    b = inputs[2] if len(inputs) == 3 else None
    g = self.groups
    n = x.shape[0]
    oc, cg, kh, kw = W.shape
    col, oh, ow = _im2col_gemm_order(x, kh, kw, self.sy, self.sx,
                                     self.ph, self.pw)
    col = col.reshape(g, cg * kh * kw, n * oh * ow)
    y = np.matmul(W.reshape(g, oc // g, cg * kh * kw), col)
    y = y.reshape(oc, n, oh, ow)
    if b is not None:
        y += b.reshape(oc, 1, 1, 1)
    return y.transpose(1, 0, 2, 3),  # (N, oC, oH, oW) view, channel-major


# ---------------------------------------------------------------- pool
class FastMaxPool2D(function_node.FunctionNode):
    """Max pooling without padding whose windows tile the input exactly
    (what AlexNet's Caffe pools reduce to): y = max over kh*kw strided
    views. Backward routes gy to the first maximum of each window in
    row-major window order, as Chainer's argmax does."""

    def __init__(self, ksize, stride, out):
        self.kh, self.kw = ksize
        self.sy, self.sx = stride
        self.oh, self.ow = out

    def _view(self, x, j, i):
        return x[:, :, j:j + self.sy * self.oh:self.sy,
                 i:i + self.sx * self.ow:self.sx]

    def forward_cpu(self, inputs):
        x, = inputs
        self.retain_inputs((0,))
        self.retain_outputs((0,))
        y = np.empty_like(x[:, :, :self.oh, :self.ow])  # x's memory order

        def part(a, b):
            xs, ys = x[a:b], y[a:b]
            np.copyto(ys, self._view(xs, 0, 0))
            for j in range(self.kh):
                for i in range(self.kw):
                    if j or i:
                        np.maximum(ys, self._view(xs, j, i), out=ys)
        _parallel(part, x.shape[0])
        return y,

    def backward(self, indexes, grad_outputs):
        x, = self.get_retained_inputs()
        y, = self.get_retained_outputs()
        gy, = grad_outputs
        x, y, gy = x.array, y.array, gy.array
        gx = np.zeros_like(x)

        def part(a, b):
            xs, ys, gys, gxs = x[a:b], y[a:b], gy[a:b], gx[a:b]
            taken = np.zeros(ys.shape, bool)
            hit = np.empty(ys.shape, bool)
            for j in range(self.kh):
                for i in range(self.kw):
                    np.equal(self._view(xs, j, i), ys, out=hit)
                    hit &= ~taken
                    taken |= hit
                    view = self._view(gxs, j, i)
                    view += gys * hit
        _parallel(part, x.shape[0])
        return chainer.Variable(gx),


def _fast_caffe_pooling_2d(x, method, kernel, stride, pad, ceil=True):
    from finetune.models.functions import pooled_size
    shape = x.shape[2:]
    out = [pooled_size(s, k, st, p, ceil)
           for s, k, st, p in zip(shape, kernel, stride, pad)]
    fits = all((o - 1) * st + k <= s
               for o, k, st, s in zip(out, kernel, stride, shape))
    xp = chainer.backend.get_array_module(x)
    if method != 'max' or any(pad) or not fits or xp is not np:
        return _ORIG['pool'](x, method, kernel, stride, pad, ceil)
    y, = FastMaxPool2D(kernel, stride, out).apply((x,))
    return y


# ---------------------------------------------------------------- LRN
def _fast_lrn_forward_cpu(self, inputs):
    if self.beta != 0.75 or chainer.backends.intel64.should_use_ideep(
            '>=auto'):
        return _ORIG['lrn'](self, inputs)
    x, = inputs
    self.retain_inputs((0,))
    self.retain_outputs((0,))
    half_n = self.n // 2
    s, scale, y = np.empty_like(x), np.empty_like(x), np.empty_like(x)

    def part(a, b):
        xs, ss, cs, ys = x[a:b], s[a:b], scale[a:b], y[a:b]
        x2 = np.square(xs, out=cs)
        np.copyto(ss, x2)
        for i in range(1, half_n + 1):
            ss[:, i:] += x2[:, :-i]
            ss[:, :-i] += x2[:, i:]
        ss *= self.alpha
        ss += self.k                 # unit_scale = k + alpha * sum
        r = np.sqrt(ss, out=ys)      # u ** 0.5
        np.sqrt(r, out=cs)           # u ** 0.25
        cs *= r                      # u ** 0.75
        np.reciprocal(cs, out=cs)    # u ** -0.75
        np.multiply(xs, cs, out=ys)
    _parallel(part, x.shape[0])
    self.unit_scale = s
    self.scale = scale
    return y,


# ---------------------------------------------------------------- detach
def _detached_features(self, x):
    runner = getattr(self, '_trunk_runner', None)
    if runner is not None and runner() is not None:
        return _ORIG['detach'](self, x)  # OpenCV trunk: already detached
    with chainer.no_backprop_mode():
        h = self.net.forward(x, stop=self.n_frozen_layers)
    return h.array if isinstance(h, chainer.Variable) else h


def apply(names):
    """Monkeypatch the variants ``names`` (idempotent); returns the list."""
    names = list(names)
    for name in names:
        if name not in ALL:
            raise ValueError('unknown variant %r (known: %s)'
                             % (name, ', '.join(ALL)))
    if 'mallopt' in names:
        mallopt_tuning()
    if 'conv' in names and 'conv' not in _ORIG:
        cls = _conv_mod.Convolution2DFunction
        _ORIG['conv'] = cls.forward_cpu
        cls.forward_cpu = _fast_conv_forward_cpu
    if 'pool' in names and 'pool' not in _ORIG:
        from finetune.models import alexnet
        _ORIG['pool'] = alexnet.caffe_pooling_2d
        alexnet.caffe_pooling_2d = _fast_caffe_pooling_2d
    if 'lrn' in names and 'lrn' not in _ORIG:
        cls = _lrn_mod.LocalResponseNormalization
        _ORIG['lrn'] = cls.forward_cpu
        cls.forward_cpu = _fast_lrn_forward_cpu
    if 'threads' in names:
        _POOL['threads'] = int(os.environ.get('OMP_NUM_THREADS') or
                               os.cpu_count() or 1)
    if 'detach' in names and 'detach' not in _ORIG:
        from finetune.training import surgery
        _ORIG['detach'] = surgery.FineTuneNet.features
        surgery.FineTuneNet.features = _detached_features
    return names


def restore():
    """Undo every monkeypatch (mallopt settings stay)."""
    _POOL['threads'] = 1
    if 'conv' in _ORIG:
        _conv_mod.Convolution2DFunction.forward_cpu = _ORIG.pop('conv')
    if 'pool' in _ORIG:
        from finetune.models import alexnet
        alexnet.caffe_pooling_2d = _ORIG.pop('pool')
    if 'lrn' in _ORIG:
        _lrn_mod.LocalResponseNormalization.forward_cpu = _ORIG.pop('lrn')
    if 'detach' in _ORIG:
        from finetune.training import surgery
        surgery.FineTuneNet.features = _ORIG.pop('detach')
