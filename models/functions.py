"""Caffe's pooling and LRN semantics on top of ``chainer.functions``.

Chainer's defaults differ from Caffe's: Caffe rounds pooled sizes up (ceil),
clips the last window to start inside the padded input, averages over
windows that may hang past the padding, and divides LRN's alpha by the
window size. These functions reproduce Caffe exactly.
"""
import math

import chainer
import chainer.functions as F
import numpy as np
from chainer import function_node
from chainer.backend import get_array_module

from finetune.models.cpu_kernels import local_response_normalization
from finetune.models.cpu_kernels import use_cpu_kernels


def pooled_size(size, kernel, stride, pad, ceil=True):
    """Caffe's output length of a pooling window sliding over ``size``."""
    rounding = math.ceil if ceil else math.floor
    out = int(rounding((size + 2 * pad - kernel) / stride)) + 1
    if pad and (out - 1) * stride >= size + pad:
        out -= 1  # the last window must start inside the image or its pad
    return out


def _pad_to_cover(x, out, kernel, stride, pad, value):
    """Pad bottom/right (beyond ``pad``) so ``out`` floor windows fit."""
    extra = [max(0, (o - 1) * s + k - (n + 2 * p))
             for o, k, s, p, n in zip(out, kernel, stride, pad, x.shape[2:])]
    if not any(extra):
        return x
    widths = ((0, 0), (0, 0), (0, extra[0]), (0, extra[1]))
    return F.pad(x, widths, 'constant', constant_values=value)


def caffe_pooling_2d(x, method, kernel, stride, pad, ceil=True):
    """Caffe's MAX or AVE pooling of ``x`` (N, C, H, W).

    Args:
        method (str): ``'max'`` or ``'ave'``.
        kernel, stride, pad (tuple of int): (height, width) each.
        ceil (bool): Caffe's default rounding (``round_mode: CEIL``).

    Returns:
        chainer.Variable of shape (N, C, H', W') with Caffe's H', W'.
    """
    out = [pooled_size(n, k, s, p, ceil)
           for n, k, s, p in zip(x.shape[2:], kernel, stride, pad)]
    if method == 'max':
        if _windows_tile(x, out, kernel, stride, pad):
            return TiledMaxPooling2D(kernel, stride, out).apply((x,))[0]
        if use_cpu_kernels(x):
            return _padded_tiled_max_pooling(x, out, kernel, stride, pad)
        h = _pad_to_cover(x, out, kernel, stride, pad, -np.inf)
        y = F.max_pooling_2d(h, kernel, stride, pad, cover_all=False)
        return y[:, :, :out[0], :out[1]]
    h = _pad_to_cover(x, out, kernel, stride, pad, 0)
    sums = F.average_pooling_2d(h, kernel, stride, pad) * (
        kernel[0] * kernel[1])
    sums = sums[:, :, :out[0], :out[1]]
    counts = _ave_pool_counts(x.shape[2:], out, kernel, stride, pad)
    xp = get_array_module(x)
    return sums / xp.asarray(counts, dtype=x.dtype)


def _padded_tiled_max_pooling(x, out, kernel, stride, pad):
    """Caffe max pooling on the CPU when padding or ceil rounding makes
    windows reach past the input (ResNet's pool1): pad with -inf once
    (``pad`` on each side, and bottom/right as far as the last window
    reaches), then :class:`TiledMaxPooling2D`, whose windows now lie in
    the padded input. Same maxima and gradients as Chainer's im2col max
    pooling, without its 9x copy and argmax."""
    h = x
    if any(pad):
        h = F.pad(x, ((0, 0), (0, 0), (pad[0],) * 2, (pad[1],) * 2),
                  'constant', constant_values=-np.inf)
    h = _pad_to_cover(h, out, kernel, stride, (0, 0), -np.inf)
    return TiledMaxPooling2D(kernel, stride, out).apply((h,))[0]


def _windows_tile(x, out, kernel, stride, pad):
    """True on the CPU when no padding is involved and every window lies in
    the input (all of AlexNet's and CaffeNet's poolings)."""
    return (get_array_module(x) is np and not any(pad) and
            all((o - 1) * s + k <= n for o, k, s, n in
                zip(out, kernel, stride, x.shape[2:])))


class TiledMaxPooling2D(function_node.FunctionNode):
    """Max pooling whose windows lie inside an unpadded input, on NumPy.

    The output is the maximum of the kh*kw strided views of the input (one
    per window offset): no im2col copy 9x the input and no argmax, which
    made Chainer's CPU max pooling 23 % of AlexNet's forward (pool1+pool2+
    pool5: 243 -> 44 ms at batch 32, benchmarks/README.md). The backward
    sends each output gradient to the first maximum of its window in
    row-major order, as Chainer's argmax-based backward does. It is not
    itself differentiable (no double backprop).
    """

    def __init__(self, kernel, stride, out):
        self.kernel = tuple(kernel)
        self.stride = tuple(stride)
        self.out = tuple(out)

    def _view(self, x, j, i):
        """x's elements at window offset (j, i), shaped like the output."""
        (sy, sx), (oh, ow) = self.stride, self.out
        return x[:, :, j:j + sy * oh:sy, i:i + sx * ow:sx]

    def _offsets(self):
        kh, kw = self.kernel
        return [(j, i) for j in range(kh) for i in range(kw)]

    def forward_cpu(self, inputs):
        x, = inputs
        self.retain_inputs((0,))
        self.retain_outputs((0,))
        offsets = self._offsets()
        # in x's memory order (channel-major after a convolution): the
        # views are read in their own order and the next layer gets it
        y = self._view(x, *offsets[0]).copy(order='K')
        for j, i in offsets[1:]:
            np.maximum(y, self._view(x, j, i), out=y)
        return y,

    def backward(self, indexes, grad_outputs):
        x = self.get_retained_inputs()[0].array
        y = self.get_retained_outputs()[0].array
        gy = grad_outputs[0].array
        gx = np.zeros_like(x)
        taken = np.zeros_like(y, dtype=bool)
        hit = np.empty_like(taken)
        routed = np.empty_like(y)
        for j, i in self._offsets():
            np.equal(self._view(x, j, i), y, out=hit)
            np.greater(hit, taken, out=hit)  # the first maximum only
            taken |= hit
            np.multiply(gy, hit, out=routed)
            view = self._view(gx, j, i)
            view += routed
        return chainer.Variable(gx),


def _ave_pool_counts(size, out, kernel, stride, pad):
    """Caffe's AVE divisor per output cell: window clipped to image + pad."""
    per_axis = []
    for n, o, k, s, p in zip(size, out, kernel, stride, pad):
        start = np.arange(o) * s - p
        stop = np.minimum(start + k, n + p)
        per_axis.append(stop - start)
    return np.outer(per_axis[0], per_axis[1]).astype(np.float32)


def caffe_lrn(x, local_size=5, alpha=1.0, beta=0.75, k=1.0,
              region='ACROSS_CHANNELS'):
    """Caffe's local response normalization of ``x`` (N, C, H, W).

    ACROSS_CHANNELS: ``x / (k + alpha / n * sum_{n channels} x^2) ** beta``
    (Chainer's ``local_response_normalization`` does not divide alpha by
    n). WITHIN_CHANNEL: ``x / (1 + alpha * mean_{n x n window} x^2) ** beta``
    with zero padding counted in the mean, as Caffe computes it.
    """
    if region == 'ACROSS_CHANNELS':
        return local_response_normalization(
            x, n=local_size, k=k, alpha=alpha / local_size, beta=beta)
    pad = (local_size - 1) // 2
    mean_sq = F.average_pooling_2d(x * x, local_size, 1, pad)
    return x * (1 + alpha * mean_sq) ** -beta
