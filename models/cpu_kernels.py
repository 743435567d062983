"""The trainable path's kernels on the CPU, as Chainer ``FunctionNode`` s.

Chainer's CPU convolution builds its im2col matrix as (N, C, kh, kw, oH, oW)
and then copies it again into GEMM order (``reshape`` of a transpose for
groups, ``tensordot`` otherwise), its backward redoes im2col for the weight
gradient and runs ``col2im`` for the input gradient; its BatchNorm and
Scale make several full-size temporaries. The functions here compute the
same values with NumPy on layouts BLAS reads directly:

* :func:`convolution_2d` writes the column matrix once, in GEMM order
  (C, kh, kw, N, oH, oW), runs one GEMM per group and keeps the output
  channel-major (an (N, oC, oH, oW) view of an (oC, N, oH, oW) array), so
  the next layer's im2col reads whole contiguous planes. The backward
  reuses the forward's column matrix for the weight gradient and builds
  the input gradient by adding kh*kw strided views (col2im without loops
  over pixels).
* :func:`channel_affine` is ``x * w[c] + b[c]`` over axis 1 in one pass
  (Caffe's Scale, and BatchNorm with the stored statistics, which is an
  affine map with constant coefficients); :func:`batch_normalization`
  normalizes with the batch statistics.
* :func:`local_response_normalization` is Chainer's LRN with in-place
  arithmetic and ``u ** -0.75`` from square roots (float ``pow`` was most
  of Chainer's LRN time).

Each public function falls back to Chainer's own function for GPU arrays,
for cases the fast path does not cover (dilation, ``cover_all``), and when
``chainer.config.finetune_cpu_kernels`` is False (the one switch, meant for
benchmarks comparing against Chainer: ``with chainer.using_config(
'finetune_cpu_kernels', False): ...``). The nodes' backwards are not
themselves differentiable (no double backprop), like ``TiledMaxPooling2D``.
"""
import chainer
import chainer.functions as F
import chainer.links as L
import numpy as np
from chainer import function_node
from chainer.utils import type_check

#: chainer.config key; False runs Chainer's functions instead (benchmarks).
CONFIG_KEY = 'finetune_cpu_kernels'


def _array(x):
    return x.array if isinstance(x, chainer.Variable) else x


def use_cpu_kernels(*arrays):
    """True when every array (or Variable) given is on NumPy and the
    ``finetune_cpu_kernels`` config is not switched off."""
    return (getattr(chainer.config, CONFIG_KEY, True) and
            all(isinstance(_array(a), np.ndarray) for a in arrays
                if a is not None))


def chainer_functions():
    """Context manager: run Chainer's own functions instead of these
    kernels (tracing exporters such as onnx_chainer know only those;
    benchmarks compare against them)."""
    return chainer.using_config(CONFIG_KEY, False)


def _pair(v):
    return tuple(v) if hasattr(v, '__getitem__') else (v, v)


# ---------------------------------------------------------------- conv
def out_size(size, kernel, stride, pad):
    """Output length of a convolution (floor rounding, no dilation)."""
    return (size + 2 * pad - kernel) // stride + 1


def _window(a, j, i, stride, out):
    """a[..., j + sy * y, i + sx * x] for y < oH, x < oW: a strided view."""
    (sy, sx), (oh, ow) = stride, out
    return a[..., j:j + sy * (oh - 1) + 1:sy, i:i + sx * (ow - 1) + 1:sx]


def im2col_gemm_order(x, kernel, stride, pad):
    """Column matrix of ``x`` (N, C, H, W) in GEMM order.

    Returns:
        numpy.ndarray (C, kh, kw, N, oH, oW), C-contiguous, x's dtype:
        ``col[c, j, i, n, y, x] = xpad[n, c, sy*y + j, sx*x + i]`` with
        ``xpad`` zero-padded by ``pad`` on each side. A 1x1 stride-1
        unpadded kernel over a channel-major ``x`` returns a view of x.
    """
    n, c, h, w = x.shape
    (kh, kw), (ph, pw) = kernel, pad
    out = (out_size(h, kh, stride[0], ph), out_size(w, kw, stride[1], pw))
    xt = x.transpose(1, 0, 2, 3)  # contiguous when x is channel-major
    if (kh, kw, ph, pw) == (1, 1, 0, 0) and stride == (1, 1):
        return np.ascontiguousarray(xt).reshape(c, 1, 1, n, h, w)
    if ph or pw:
        padded = np.zeros((c, n, h + 2 * ph, w + 2 * pw), x.dtype)
        padded[:, :, ph:ph + h, pw:pw + w] = xt
        xt = padded
    col = np.empty((c, kh, kw, n) + out, x.dtype)
    for j in range(kh):
        for i in range(kw):
            col[:, j, i] = _window(xt, j, i, stride, out)
    return col


def col2im_gemm_order(col, shape, stride, pad):
    """Adjoint of :func:`im2col_gemm_order`: sum ``col`` back into an image.

    Args:
        col: (C, kh, kw, N, oH, oW) array.
        shape: (N, C, H, W) of the image.

    Returns:
        numpy.ndarray (N, C, H, W), a channel-major view, col's dtype.
    """
    c, kh, kw, n, oh, ow = col.shape
    h, w = shape[2:]
    ph, pw = pad
    if (kh, kw, ph, pw) == (1, 1, 0, 0) and stride == (1, 1):
        return col.reshape(c, n, h, w).transpose(1, 0, 2, 3)
    img = np.zeros((c, n, h + 2 * ph, w + 2 * pw), col.dtype)
    for j in range(kh):
        for i in range(kw):
            view = _window(img, j, i, stride, (oh, ow))
            view += col[:, j, i]
    return img[:, :, ph:ph + h, pw:pw + w].transpose(1, 0, 2, 3)


def _channels_first(a, groups):
    """(N, C, ...) -> (G, C/G, N*...) C-contiguous (a copy unless ``a`` is
    a channel-major view)."""
    t = np.ascontiguousarray(np.moveaxis(a, 1, 0))
    return t.reshape(groups, a.shape[1] // groups, -1)


class Convolution2D(function_node.FunctionNode):
    """2-D convolution (no dilation, floor rounding) on NumPy, grouped.

    Inputs: x (N, C, H, W), W (oC, C/G, kh, kw), optional b (oC,), one
    float dtype. Output: (N, oC, oH, oW) in channel-major memory order.
    """

    def __init__(self, stride, pad, groups, keep_col=True):
        self.stride = _pair(stride)
        self.pad = _pair(pad)
        self.groups = int(groups)
        self.keep_col = keep_col  # for the weight gradient

    def check_type_forward(self, in_types):
        type_check._argname(in_types, ('x', 'W', 'b')[:len(in_types)])
        x, w = in_types[:2]
        type_check.expect(
            x.dtype.kind == 'f', w.dtype == x.dtype,
            x.ndim == 4, w.ndim == 4,
            x.shape[1] == w.shape[1] * self.groups,
            w.shape[0] % self.groups == 0)
        if len(in_types) == 3:
            b = in_types[2]
            type_check.expect(b.dtype == x.dtype, b.ndim == 1,
                              b.shape[0] == w.shape[0])

    def forward_cpu(self, inputs):
        x, W = inputs[:2]
        g = self.groups
        oc, cg, kh, kw = W.shape
        col = im2col_gemm_order(x, (kh, kw), self.stride, self.pad)
        n, oh, ow = col.shape[3:]
        col = col.reshape(g, cg * kh * kw, n * oh * ow)
        y = np.empty((g, oc // g, n * oh * ow), x.dtype)
        wg = W.reshape(g, oc // g, cg * kh * kw)
        for k in range(g):
            np.dot(wg[k], col[k], out=y[k])
        y = y.reshape(oc, n, oh, ow)
        if len(inputs) == 3:
            y += inputs[2].reshape(oc, 1, 1, 1)
        self.retain_inputs((0, 1))
        self._col = col if self.keep_col else None
        return y.transpose(1, 0, 2, 3),

    def backward(self, indexes, grad_outputs):
        x, W = (v.array for v in self.get_retained_inputs())
        g = self.groups
        gy = _channels_first(grad_outputs[0].array, g)  # (G, oC/G, M)
        oc, cg, kh, kw = W.shape
        out = []
        if 0 in indexes:
            wg = W.reshape(g, oc // g, cg * kh * kw)
            gcol = np.empty((g, cg * kh * kw, gy.shape[2]), W.dtype)
            for k in range(g):
                np.dot(wg[k].T, gy[k], out=gcol[k])
            oh, ow = grad_outputs[0].shape[2:]
            gcol = gcol.reshape(cg * g, kh, kw, x.shape[0], oh, ow)
            out.append(col2im_gemm_order(gcol, x.shape, self.stride,
                                         self.pad))
        if 1 in indexes:
            col = self._col
            if col is None:
                col = im2col_gemm_order(x, (kh, kw), self.stride, self.pad)
                col = col.reshape(g, cg * kh * kw, -1)
            gW = np.empty((g, oc // g, cg * kh * kw), W.dtype)
            for k in range(g):
                np.dot(gy[k], col[k].T, out=gW[k])
            out.append(gW.reshape(W.shape))
        if 2 in indexes:
            out.append(gy.sum(axis=2).reshape(oc))
        self._col = None
        return [chainer.Variable(a) for a in out]


def convolution_2d(x, W, b=None, stride=1, pad=0, groups=1, dilate=1):
    """``F.convolution_2d(x, W, b, stride, pad, groups=groups)``, with
    :class:`Convolution2D` on the CPU (undilated, one dtype)."""
    dtypes = {_array(a).dtype for a in (x, W, b) if a is not None}
    if (not use_cpu_kernels(x, W, b) or _pair(dilate) != (1, 1) or
            len(dtypes) != 1):
        return F.convolution_2d(x, W, b, stride, pad, dilate=dilate,
                                groups=groups)
    keep_col = (chainer.config.enable_backprop and
                isinstance(W, chainer.Variable) and W.requires_grad)
    inputs = (x, W) if b is None else (x, W, b)
    return Convolution2D(stride, pad, groups, keep_col).apply(inputs)[0]


def convolution_link(link, x):
    """Run ``chainer.links.Convolution2D`` ``link`` on ``x`` through
    :func:`convolution_2d` (the link's own call when W is uninitialized)."""
    if link.W.array is None:
        return link(x)
    return convolution_2d(x, link.W, link.b, link.stride, link.pad,
                          link.groups, link.dilate)


def call_link(link, *inputs):
    """``link(*inputs)``, with convolution links run by
    :func:`convolution_2d` (the models' one entry point to these kernels)."""
    if isinstance(link, L.Convolution2D):
        return convolution_link(link, *inputs)
    return link(*inputs)


# ---------------------------------------------------------------- affine
def _per_channel(v, ndim):
    """(C,) -> (1, C, 1, ...) broadcastable over an ndim-D input."""
    return v.reshape((1, -1) + (1,) * (ndim - 2))


def _channel_sum(a):
    """Sum of (N, C, ...) over every axis but 1 -> (C,)."""
    return a.sum(axis=(0,) + tuple(range(2, a.ndim)))


def _check_per_channel(in_types, names):
    """Type check of x (N, C, ...) float and (C,) vectors of its dtype."""
    type_check._argname(in_types, names[:len(in_types)])
    x = in_types[0]
    type_check.expect(x.dtype.kind == 'f', x.ndim >= 2)
    for v in in_types[1:]:
        type_check.expect(v.dtype == x.dtype, v.ndim == 1,
                          v.shape[0] == x.shape[1])


class ChannelAffine(function_node.FunctionNode):
    """``y = x * w[c] + b[c]`` over axis 1 of x (N, C, ...), one pass.

    Inputs: x, w (C,), optional b (C,). Output: like x.
    """

    def check_type_forward(self, in_types):
        _check_per_channel(in_types, ('x', 'w', 'b'))

    def forward_cpu(self, inputs):
        x, w = inputs[:2]
        y = np.multiply(x, _per_channel(w, x.ndim))
        if len(inputs) == 3:
            y += _per_channel(inputs[2], x.ndim)
        self.retain_inputs((0, 1))
        return y,

    def backward(self, indexes, grad_outputs):
        x, w = (v.array for v in self.get_retained_inputs())
        gy = grad_outputs[0].array
        out = []
        if 0 in indexes:
            out.append(np.multiply(gy, _per_channel(w, x.ndim)))
        if 1 in indexes:
            out.append(_channel_sum(gy * x).astype(w.dtype, copy=False))
        if 2 in indexes:
            out.append(_channel_sum(gy).astype(w.dtype, copy=False))
        return [chainer.Variable(a) for a in out]


def channel_affine(x, w, b=None):
    """``x * w[c] + b[c]`` (x (N, C, ...), w and b (C,)); :class:`
    ChannelAffine` on the CPU, broadcast Chainer arithmetic elsewhere."""
    if not use_cpu_kernels(x, w, b):
        y = x * F.broadcast_to(F.reshape(w, _per_channel(w, x.ndim).shape),
                               x.shape)
        if b is not None:
            y = y + F.broadcast_to(
                F.reshape(b, _per_channel(b, x.ndim).shape), x.shape)
        return y
    inputs = (x, w) if b is None else (x, w, b)
    return ChannelAffine().apply(inputs)[0]


class NormalizedAffine(function_node.FunctionNode):
    """``y = (x - mean[c]) * (inv_std[c] * W[c]) + b[c]`` over axis 1 of
    x: a normalization by constant statistics (a BatchNorm on its stored
    statistics) and the Scale after it, three passes over x forward
    instead of the two layers' four, and one for each gradient backward.

    The mean is subtracted first, as Caffe does: folding it into the shift
    (``x * w + (b - mean * w)``) would subtract large numbers when a
    channel's mean is large against its std, and so would the Scale's
    gradient folded the same way; it is ``inv_std * sum(gy * (x -
    mean))``.

    Inputs: x (N, C, ...), W (C,), optional b (C,), one float dtype;
    ``mean`` and ``inv_std`` (C,) arrays of that dtype, constants.
    """

    def __init__(self, mean, inv_std):
        self.mean = mean
        self.inv_std = inv_std

    def check_type_forward(self, in_types):
        _check_per_channel(in_types, ('x', 'W', 'b'))

    def forward_cpu(self, inputs):
        x, W = inputs[:2]
        y = np.subtract(x, _per_channel(self.mean, x.ndim))
        y *= _per_channel(W * self.inv_std, x.ndim)
        if len(inputs) == 3:
            y += _per_channel(inputs[2], x.ndim)
        self.retain_inputs((0, 1))
        return y,

    def backward(self, indexes, grad_outputs):
        x, W = (v.array for v in self.get_retained_inputs())
        gy = grad_outputs[0].array
        out = []
        if 0 in indexes:
            out.append(np.multiply(
                gy, _per_channel(W * self.inv_std, x.ndim)))
        if 1 in indexes:
            centred = np.subtract(x, _per_channel(self.mean, x.ndim))
            centred *= gy
            out.append((_channel_sum(centred) * self.inv_std).astype(
                W.dtype, copy=False))
        if 2 in indexes:
            out.append(_channel_sum(gy).astype(W.dtype, copy=False))
        return [chainer.Variable(a) for a in out]


def normalized_affine(x, mean, inv_std, W, b=None):
    """``(x - mean[c]) * inv_std[c] * W[c] + b[c]``:
    :class:`NormalizedAffine` on the CPU, two :func:`channel_affine`
    elsewhere."""
    if not use_cpu_kernels(x, W, b):
        return channel_affine(channel_affine(x, inv_std, -mean * inv_std),
                              W, b)
    inputs = (x, W) if b is None else (x, W, b)
    return NormalizedAffine(mean, inv_std).apply(inputs)[0]


def stored_statistics(mean, var, eps, dtype):
    """(mean, 1 / sqrt(var + eps)) as (C,) arrays of ``dtype``; the
    square root in float64."""
    xp = chainer.backend.get_array_module(var)
    inv_std = 1 / xp.sqrt(var.astype(np.float64) + eps)
    return mean.astype(dtype), inv_std.astype(dtype)


def fixed_batch_normalization(x, mean, var, eps):
    """``(x - mean[c]) / sqrt(var[c] + eps)`` with constant statistics
    (C,); no gradient to them. ``F.fixed_batch_normalization`` (gamma 1,
    beta 0) off the CPU."""
    xd = _array(x).dtype
    if not use_cpu_kernels(x, mean, var):
        xp = chainer.backend.get_array_module(x)
        one, zero = xp.ones(len(mean), xd), xp.zeros(len(mean), xd)
        return F.fixed_batch_normalization(
            x, one, zero, mean.astype(xd, copy=False),
            var.astype(xd, copy=False), eps=eps)
    mean, inv_std = stored_statistics(mean, var, eps, xd)
    return normalized_affine(x, mean, inv_std, np.ones_like(inv_std))


class BatchNormalization(function_node.FunctionNode):
    """``(x - mean) / sqrt(var + eps)`` with x's own per-channel mean and
    (biased) variance over every axis but 1; no scale or shift."""

    def __init__(self, eps):
        self.eps = eps

    def forward_cpu(self, inputs):
        x, = inputs
        mean = _channel_sum(x) / (x.size // x.shape[1])
        xc = x - _per_channel(mean.astype(x.dtype), x.ndim)
        var = _channel_sum(np.square(xc)) / (x.size // x.shape[1])
        inv_std = (1 / np.sqrt(var + self.eps)).astype(x.dtype)
        xc *= _per_channel(inv_std, x.ndim)  # now x_hat
        self.retain_outputs((0,))
        self._inv_std = inv_std
        return xc,

    def backward(self, indexes, grad_outputs):
        x_hat = self.get_retained_outputs()[0].array
        gy = grad_outputs[0].array
        m = x_hat.size // x_hat.shape[1]
        mean_gy = _channel_sum(gy) / m
        mean_gy_xhat = _channel_sum(gy * x_hat) / m
        gx = x_hat * _per_channel(mean_gy_xhat.astype(gy.dtype), gy.ndim)
        np.subtract(gy, gx, out=gx)
        gx -= _per_channel(mean_gy.astype(gy.dtype), gy.ndim)
        gx *= _per_channel(self._inv_std, gy.ndim)
        return chainer.Variable(gx),


def batch_normalization(x, eps):
    """x normalized with its batch statistics (gamma 1, beta 0):
    :class:`BatchNormalization` on the CPU, ``F.batch_normalization``
    elsewhere."""
    if not use_cpu_kernels(x):
        xp = chainer.backend.get_array_module(x)
        c = x.shape[1]
        xd = _array(x).dtype
        return F.batch_normalization(x, xp.ones(c, xd), xp.zeros(c, xd),
                                     eps=eps)
    return BatchNormalization(eps).apply((x,))[0]


# ---------------------------------------------------------------- LRN
def _channel_window_sum(a, n):
    """Sum of ``a`` (N, C, ...) over the channels c - n//2 .. c + n//2
    (those that exist), for each channel c; a new array."""
    s = a.copy()
    for i in range(1, n // 2 + 1):
        s[:, i:] += a[:, :-i]
        s[:, :-i] += a[:, i:]
    return s


def _inverse_power(u, beta, out):
    """``u ** -beta`` into ``out``; beta 0.75 as 1 / (sqrt(u) * u ** 0.25)
    (three square roots and a product are ~3x cheaper than float pow)."""
    if beta != 0.75:
        return np.power(u, -beta, out=out)
    r = np.sqrt(u)
    np.sqrt(r, out=out)
    out *= r
    return np.reciprocal(out, out=out)


class LocalResponseNormalization(function_node.FunctionNode):
    """``x / (k + alpha * sum_{n channels} x^2) ** beta`` across channels
    (Chainer's definition: alpha not divided by n), x (N, C, ...)."""

    def __init__(self, n, k, alpha, beta):
        self.n, self.k, self.alpha, self.beta = int(n), k, alpha, beta

    def check_type_forward(self, in_types):
        type_check._argname(in_types, ('x',))
        x, = in_types
        type_check.expect(x.dtype.kind == 'f', x.ndim >= 2)

    def forward_cpu(self, inputs):
        x, = inputs
        u = _channel_window_sum(np.square(x), self.n)
        u *= x.dtype.type(self.alpha)
        u += x.dtype.type(self.k)
        scale = _inverse_power(u, self.beta, np.empty_like(u))
        self.retain_inputs((0,))
        self._unit_scale, self._scale = u, scale
        return np.multiply(x, scale),

    def backward(self, indexes, grad_outputs):
        x = self.get_retained_inputs()[0].array
        gy = grad_outputs[0].array
        u, scale = self._unit_scale, self._scale
        summand = np.multiply(x, scale)  # y
        summand *= gy
        summand /= u
        sums = _channel_window_sum(summand, self.n)
        sums *= x
        sums *= x.dtype.type(2 * self.alpha * self.beta)
        gx = np.multiply(gy, scale)
        gx -= sums
        return chainer.Variable(gx),


def local_response_normalization(x, n=5, k=2, alpha=1e-4, beta=0.75):
    """``F.local_response_normalization(x, n, k, alpha, beta)``, with
    :class:`LocalResponseNormalization` on the CPU."""
    if not use_cpu_kernels(x):
        return F.local_response_normalization(x, n, k, alpha, beta)
    return LocalResponseNormalization(n, k, alpha, beta).apply((x,))[0]
