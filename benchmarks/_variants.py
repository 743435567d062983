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
``lrn``
    ``LocalResponseNormalization.forward_cpu`` with in-place arithmetic and
    ``u ** -0.75`` computed as ``1 / (sqrt(u) * sqrt(sqrt(u)))`` (beta 0.75
    only; other betas use Chainer's code). Keeps ``unit_scale``/``scale``
    so Chainer's backward is unchanged.
``detach``
    ``FineTuneNet.features`` returns a plain array, so the first trained
    layer (fc6) does not compute a gradient for its frozen input (Chainer
    computes gx of fc6, (N, 9216), and throws it away).
"""
import ctypes
import ctypes.util

import chainer
import numpy as np
from chainer import function_node
from chainer.functions.connection import convolution_2d as _conv_mod
from chainer.functions.normalization import (
    local_response_normalization as _lrn_mod)

ALL = ('mallopt', 'conv', 'pool', 'lrn', 'detach')

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


# ---------------------------------------------------------------- conv
def _im2col_gemm_order(x, kh, kw, sy, sx, ph, pw):
    """x (N, C, H, W) -> col (C, kh, kw, N, oH, oW), C-contiguous."""
    n, c, h, w = x.shape
    oh = (h + 2 * ph - kh) // sy + 1
    ow = (w + 2 * pw - kw) // sx + 1
    xt = x.transpose(1, 0, 2, 3)  # contiguous when x came from _fast_conv
    if ph or pw:
        padded = np.empty((c, n, h + 2 * ph, w + 2 * pw), x.dtype)
        if ph:
            padded[:, :, :ph] = 0
            padded[:, :, h + ph:] = 0
        if pw:
            padded[:, :, :, :pw] = 0
            padded[:, :, :, w + pw:] = 0
        padded[:, :, ph:ph + h, pw:pw + w] = xt
        xt = padded
    col = np.empty((c, kh, kw, n, oh, ow), x.dtype)
    for j in range(kh):
        for i in range(kw):
            col[:, j, i] = xt[:, :, j:j + sy * oh:sy, i:i + sx * ow:sx]
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
        np.copyto(y, self._view(x, 0, 0))
        for j in range(self.kh):
            for i in range(self.kw):
                if j or i:
                    np.maximum(y, self._view(x, j, i), out=y)
        return y,

    def backward(self, indexes, grad_outputs):
        x, = self.get_retained_inputs()
        y, = self.get_retained_outputs()
        gy, = grad_outputs
        x, y, gy = x.array, y.array, gy.array
        gx = np.zeros_like(x)
        taken = np.zeros(y.shape, bool)
        hit = np.empty(y.shape, bool)
        for j in range(self.kh):
            for i in range(self.kw):
                np.equal(self._view(x, j, i), y, out=hit)
                hit &= ~taken
                taken |= hit
                view = self._view(gx, j, i)
                view += gy * hit
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
    x2 = np.square(x)
    s = x2.copy()
    for i in range(1, half_n + 1):
        s[:, i:] += x2[:, :-i]
        s[:, :-i] += x2[:, i:]
    s *= self.alpha
    s += self.k                      # unit_scale = k + alpha * sum
    r = np.sqrt(s, out=x2)           # u ** 0.5
    scale = np.sqrt(r)               # u ** 0.25
    scale *= r                       # u ** 0.75
    np.reciprocal(scale, out=scale)  # u ** -0.75
    self.unit_scale = s
    self.scale = scale
    return x * scale,


# ---------------------------------------------------------------- detach
def _detached_features(self, x):
    with chainer.no_backprop_mode():
        h = self.net.forward(x, stop=self.frozen)
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
    if 'detach' in names and 'detach' not in _ORIG:
        from finetune import surgery
        _ORIG['detach'] = surgery.FineTuneNet.features
        surgery.FineTuneNet.features = _detached_features
    return names


def restore():
    """Undo every monkeypatch (mallopt settings stay)."""
    if 'conv' in _ORIG:
        _conv_mod.Convolution2DFunction.forward_cpu = _ORIG.pop('conv')
    if 'pool' in _ORIG:
        from finetune.models import alexnet
        alexnet.caffe_pooling_2d = _ORIG.pop('pool')
    if 'lrn' in _ORIG:
        _lrn_mod.LocalResponseNormalization.forward_cpu = _ORIG.pop('lrn')
    if 'detach' in _ORIG:
        from finetune import surgery
        surgery.FineTuneNet.features = _ORIG.pop('detach')
