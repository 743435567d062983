"""Kernels for onnx's ``ReferenceEvaluator`` transcribed from the operators'
specifications. Its LRN kernel in onnx < 1.19 loops over the batch axis
instead of the channels (onnx/onnx#7805, fixed upstream by #8331); every
other operator the tests run is onnx's own."""
import math

import numpy as np
from onnx.reference.op_run import OpRun


class LRN(OpRun):
    """ONNX LRN as specified: a window of ``size`` channels around each."""

    def _run(self, x, alpha=None, beta=None, bias=None, size=None):
        channels = x.shape[1]
        before = (size - 1) // 2
        after = int(math.ceil((size - 1) / 2))
        square_sum = np.zeros_like(x)
        for c in range(channels):
            window = x[:, max(0, c - before):min(channels, c + after + 1)]
            square_sum[:, c] = np.sum(window ** 2, axis=1)
        y = x / (bias + alpha / size * square_sum) ** beta
        return (y.astype(x.dtype),)
