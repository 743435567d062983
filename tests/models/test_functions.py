"""models/functions.py: Caffe pooling's fast CPU path against Chainer's."""
import chainer
import chainer.functions as F
import numpy as np
import pytest

from finetune.models.functions import caffe_pooling_2d
from finetune.models.functions import TiledMaxPooling2D


def chainer_max_pooling(x, kernel, stride):
    """Chainer's own max pooling (im2col + argmax), no padding."""
    return F.max_pooling_2d(x, kernel, stride, 0, cover_all=False)


@pytest.mark.parametrize('shape,kernel,stride', [
    ((2, 3, 55, 55), (3, 3), (2, 2)),   # AlexNet pool1: overlapping
    ((2, 4, 13, 13), (3, 3), (2, 2)),   # pool5
    ((3, 2, 10, 12), (2, 3), (2, 3)),   # non-square kernel and stride
    ((1, 2, 8, 8), (2, 2), (2, 2)),
])
@pytest.mark.parametrize('ties', [False, True])
def test_tiled_max_pooling_equals_chainers(shape, kernel, stride, ties):
    """Same outputs and same gradients, ties included (small integers make
    many windows hold their maximum twice; the first one gets it)."""
    rng = np.random.RandomState(0)
    x_np = (rng.randint(0, 3, shape) if ties else rng.randn(*shape)
            ).astype(np.float32)
    ours_x, theirs_x = chainer.Variable(x_np.copy()), chainer.Variable(
        x_np.copy())
    ours = caffe_pooling_2d(ours_x, 'max', kernel, stride, (0, 0))
    assert isinstance(ours.creator, TiledMaxPooling2D)
    theirs = chainer_max_pooling(theirs_x, kernel, stride)
    assert ours.shape == theirs.shape
    np.testing.assert_array_equal(ours.array, theirs.array)
    gy = rng.randn(*ours.shape).astype(np.float32)
    ours.grad, theirs.grad = gy, gy.copy()
    ours.backward()
    theirs.backward()
    np.testing.assert_allclose(ours_x.grad, theirs_x.grad, rtol=1e-6,
                               atol=1e-6)
    assert np.count_nonzero(ours_x.grad) > 0


def test_padded_or_overhanging_windows_keep_the_general_path():
    """With Chainer's functions (cpu_kernels.chainer_functions(), what the
    ONNX export traces); by default they run TiledMaxPooling2D on a -inf
    padded input (tests/models/test_cpu_kernels.py)."""
    from finetune.models.cpu_kernels import chainer_functions
    x = np.random.RandomState(1).randn(1, 2, 6, 6).astype(np.float32)
    with chainer_functions():
        padded = caffe_pooling_2d(x, 'max', (3, 3), (2, 2), (1, 1))
        # ceil rounding: 6 -> 3 windows of 3 with stride 2 hang past the edge
        overhang = caffe_pooling_2d(x, 'max', (3, 3), (2, 2), (0, 0))
    assert not isinstance(padded.creator, TiledMaxPooling2D)
    assert overhang.shape == (1, 2, 3, 3)
    assert not isinstance(overhang.creator, TiledMaxPooling2D)
