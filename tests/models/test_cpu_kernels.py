"""models/cpu_kernels.py against Chainer's own functions and OpenCV.

Each kernel's forward is held to Chainer's function within 1e-5 of the
largest output, its gradients to Chainer's backward, and its backward to
numerical differentiation (``chainer.gradient_check.check_backward``,
float64). The models that call the kernels are held to Chainer's path
(``cpu_kernels.chainer_functions()``) and to OpenCV's dnn.
"""
import json
import subprocess
import sys

import chainer
import chainer.functions as F
import chainer.links as L
import cv2
import numpy as np
import pytest
from chainer import gradient_check
from chainer.utils import type_check
from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st

from finetune.caffe.importer import import_caffemodel
from finetune.models.alexnet import LAYER_NAMES
from finetune.models import CaffeGraph
from finetune.models import cpu_kernels as K
from finetune.models.caffe_graph import CaffeBatchNorm
from finetune.models.caffe_graph import CaffeScale


def relative_error(actual, reference):
    """Largest difference over the largest reference value (0 when both
    are all zero: e.g. the input gradient of a window that reads only
    padding)."""
    return np.abs(actual - reference).max() / max(np.abs(reference).max(),
                                                  1e-300)


def graph_nodes(y):
    """The FunctionNodes behind Variable ``y`` (every one, once)."""
    seen, todo = {}, [y.creator_node]
    while todo:
        node = todo.pop()
        if node is None or id(node) in seen:
            continue
        seen[id(node)] = node
        todo.extend(v.creator_node for v in node.inputs)
    return list(seen.values())


def grads_of(fn, arrays, gy):
    """Forward ``fn(*Variables)``, backward with ``gy``; (y, grads)."""
    variables = [chainer.Variable(a.copy(order='K')) for a in arrays]
    y = fn(*variables)
    y.grad = gy.copy()
    y.backward()
    return y.array, [v.grad for v in variables]


def assert_same_as_chainer(ours, theirs, arrays, seed=0, tol=1e-5):
    """``ours`` and ``theirs`` agree in outputs and gradients (1e-5 of the
    largest value, or 1e-12 in float64)."""
    rng = np.random.RandomState(seed)
    y_ref = theirs(*[chainer.Variable(a) for a in arrays]).array
    gy = rng.randn(*y_ref.shape).astype(y_ref.dtype)
    y, grads = grads_of(ours, arrays, gy)
    y_ref, grads_ref = grads_of(theirs, arrays, gy)
    assert y.shape == y_ref.shape and y.dtype == y_ref.dtype
    assert relative_error(y, y_ref) < tol
    for g, g_ref in zip(grads, grads_ref):
        assert g.shape == g_ref.shape and g.dtype == g_ref.dtype
        assert relative_error(g, g_ref) < tol


# ------------------------------------------------------------ convolution
CONV_CASES = [  # (N, C, H, W), out channels, kernel, stride, pad, groups
    ((2, 3, 31, 31), 8, 11, 4, 0, 1),   # AlexNet conv1: stride 4
    ((2, 8, 9, 9), 6, 5, 1, 2, 2),      # conv2: groups 2, pad 2
    ((2, 6, 5, 5), 8, 3, 1, 1, 1),      # conv3
    ((2, 8, 5, 5), 8, 3, 1, 1, 2),      # conv4/conv5
    ((2, 4, 8, 8), 6, 1, 2, 0, 1),      # ResNet 1x1 stride 2 projection
    ((2, 4, 6, 6), 5, 1, 1, 0, 1),      # ResNet 1x1 stride 1 (no im2col)
    ((1, 3, 7, 6), 4, 3, 2, 1, 1),      # rows/columns the stride skips
    ((3, 4, 5, 4), 4, (3, 2), (2, 1), (0, 1), 4),  # depthwise, H != W
]


def conv_arrays(shape, out, kernel, groups, dtype, seed=0):
    rng = np.random.RandomState(seed)
    kh, kw = K._pair(kernel)
    x = rng.randn(*shape).astype(dtype)
    W = rng.randn(out, shape[1] // groups, kh, kw).astype(dtype)
    b = rng.randn(out).astype(dtype)
    return x, W, b


@pytest.mark.parametrize('shape,out,kernel,stride,pad,groups', CONV_CASES)
@pytest.mark.parametrize('dtype', [np.float32, np.float64])
def test_convolution_equals_chainers(shape, out, kernel, stride, pad, groups,
                                     dtype):
    arrays = conv_arrays(shape, out, kernel, groups, dtype)

    def ours(x, W, b):
        y = K.convolution_2d(x, W, b, stride, pad, groups)
        assert isinstance(y.creator, K.Convolution2D)
        return y

    def theirs(x, W, b):
        return F.convolution_2d(x, W, b, stride, pad, groups=groups)
    assert_same_as_chainer(ours, theirs, arrays)
    # without a bias
    assert_same_as_chainer(lambda x, W: ours(x, W, None),
                           lambda x, W: theirs(x, W, None), arrays[:2])


@pytest.mark.parametrize('shape,out,kernel,stride,pad,groups', CONV_CASES)
def test_convolution_gradient_check(shape, out, kernel, stride, pad, groups):
    x, W, b = conv_arrays(shape, out, kernel, groups, np.float64, seed=1)
    y = F.convolution_2d(x, W, b, stride, pad, groups=groups)
    gy = np.random.RandomState(2).randn(*y.shape)
    gradient_check.check_backward(
        lambda x, W, b: K.convolution_2d(x, W, b, stride, pad, groups),
        (x, W, b), gy, dtype=np.float64, atol=1e-6, rtol=1e-5)


@settings(derandomize=True, max_examples=40, deadline=None)
@given(n=st.integers(1, 3), cg=st.integers(1, 3), og=st.integers(1, 3),
       groups=st.integers(1, 3), size=st.tuples(st.integers(1, 9),
                                                st.integers(1, 9)),
       kernel=st.tuples(st.integers(1, 4), st.integers(1, 4)),
       stride=st.tuples(st.integers(1, 4), st.integers(1, 4)),
       pad=st.tuples(st.integers(0, 2), st.integers(0, 2)),
       channel_major=st.booleans())
def test_convolution_any_geometry(n, cg, og, groups, size, kernel, stride,
                                  pad, channel_major):
    """Any kernel, stride and padding that gives an output, with inputs in
    either memory order (a channel-major view is what the kernel itself
    returns, so the next convolution reads one)."""
    h, w = (max(s, k - 2 * p) for s, k, p in zip(size, kernel, pad))
    rng = np.random.RandomState(h * 10 + w)
    x = rng.randn(n, cg * groups, h, w)
    if channel_major:
        x = np.ascontiguousarray(x.transpose(1, 0, 2, 3)).transpose(
            1, 0, 2, 3)
    W = rng.randn(og * groups, cg, *kernel)
    b = rng.randn(og * groups)
    assert_same_as_chainer(
        lambda x, W, b: K.convolution_2d(x, W, b, stride, pad, groups),
        lambda x, W, b: F.convolution_2d(x, W, b, stride, pad,
                                         groups=groups), (x, W, b))


def test_convolution_frozen_weights_and_input_gradients_only():
    """W without a gradient (a frozen layer): no column matrix is kept,
    the input gradient is still Chainer's; a frozen input: only gW, gb."""
    x, W, b = conv_arrays((2, 4, 7, 7), 6, 3, 2, np.float64)
    gy = np.random.RandomState(3).randn(2, 6, 7, 7)
    for frozen in ('W', 'x'):
        vs = {k: chainer.Variable(a.copy(), requires_grad=(k != frozen))
              for k, a in zip('xWb', (x, W, b))}
        y = K.convolution_2d(vs['x'], vs['W'], vs['b'], 1, 1, 2)
        assert (y.creator._col is None) == (frozen == 'W')
        y.grad = gy
        y.backward()
        ref = {k: chainer.Variable(a.copy()) for k, a in zip('xWb', (x, W, b))}
        y_ref = F.convolution_2d(ref['x'], ref['W'], ref['b'], 1, 1,
                                 groups=2)
        y_ref.grad = gy
        y_ref.backward()
        for k in 'xWb':
            if k == frozen:
                assert vs[k].grad is None
            else:
                assert relative_error(vs[k].grad, ref[k].grad) < 1e-12


@pytest.mark.parametrize('x_shape,w_shape,b_shape,dtypes', [
    ((2, 4, 5, 5), (6, 3, 3, 3), (6,), 'fff'),   # channels != C/groups
    ((2, 4, 5, 5), (6, 2, 3, 3), (5,), 'fff'),   # bias of the wrong size
    ((2, 4, 5, 5), (6, 2, 3, 3), (6,), 'iii'),   # integers
    ((4, 5, 5), (6, 2, 3, 3), (6,), 'fff'),      # 3-D input
])
def test_convolution_rejects_what_chainer_rejects(x_shape, w_shape, b_shape,
                                                  dtypes):
    kinds = {'f': np.float32, 'd': np.float64, 'i': np.int32}
    arrays = [np.ones(s, kinds[d]) for s, d in
              zip((x_shape, w_shape, b_shape), dtypes)]
    with pytest.raises(type_check.InvalidType):
        F.convolution_2d(*arrays, 1, 1, groups=2)
    with pytest.raises(type_check.InvalidType):
        K.convolution_2d(*arrays, 1, 1, 2)


def test_convolution_falls_back_to_chainer():
    """Dilation, mixed dtypes and the chainer_functions() switch run
    Chainer's node."""
    x, W, b = conv_arrays((1, 2, 9, 9), 2, 3, 1, np.float32)
    y = K.convolution_2d(x, W, b, 1, 2, 1, dilate=2)
    assert type(y.creator).__name__ == 'Convolution2DFunction'
    np.testing.assert_array_equal(
        y.array, F.convolution_2d(x, W, b, 1, 2, dilate=2).array)
    with K.chainer_functions():
        y = K.convolution_2d(x, W, b, 1, 1)
    assert type(y.creator).__name__ == 'Convolution2DFunction'
    y = K.convolution_2d(x, W.astype(np.float64), b, 1, 1)  # mixed dtypes
    assert type(y.creator).__name__ == 'Convolution2DFunction'
    np.testing.assert_array_equal(
        y.array, F.convolution_2d(x, W.astype(np.float64), b, 1, 1).array)


def test_im2col_col2im_are_adjoint():
    """<im2col(x), c> == <x, col2im(c)> for random x, c: col2im is the
    exact transpose (every window position, pad and stride remainder)."""
    rng = np.random.RandomState(4)
    cases = [((2, 3, 9, 8), (3, 2), (2, 3), (1, 0)),
             ((1, 2, 11, 11), (5, 5), (4, 4), (2, 2))]
    for shape, kernel, stride, pad in cases:
        x = rng.randn(*shape)
        col = K.im2col_gemm_order(x, kernel, stride, pad)
        c = rng.randn(*col.shape)
        back = K.col2im_gemm_order(c, shape, stride, pad)
        assert back.shape == shape
        assert np.isclose((col * c).sum(), (x * back).sum(), rtol=1e-12)


# ------------------------------------------------------ BatchNorm, Scale
BN_SHAPES = [(4, 3, 5, 5), (2, 8, 1, 1), (5, 3)]


@pytest.mark.parametrize('shape', BN_SHAPES)
@pytest.mark.parametrize('dtype', [np.float32, np.float64])
def test_channel_affine_equals_chainers(shape, dtype):
    rng = np.random.RandomState(5)
    c = shape[1]
    arrays = (rng.randn(*shape).astype(dtype), rng.randn(c).astype(dtype),
              rng.randn(c).astype(dtype))

    def theirs(x, w, b):
        s = (1, c) + (1,) * (len(shape) - 2)
        return (x * F.broadcast_to(F.reshape(w, s), shape) +
                F.broadcast_to(F.reshape(b, s), shape))

    def ours(x, w, b):
        y = K.channel_affine(x, w, b)
        assert isinstance(y.creator, K.ChannelAffine)
        return y
    assert_same_as_chainer(ours, theirs, arrays)
    gradient_check.check_backward(
        K.channel_affine, tuple(a.astype(np.float64) for a in arrays),
        rng.randn(*shape), dtype=np.float64)
    gradient_check.check_backward(
        K.channel_affine, tuple(a.astype(np.float64) for a in arrays[:2]),
        rng.randn(*shape), dtype=np.float64)


@pytest.mark.parametrize('shape', BN_SHAPES)
@pytest.mark.parametrize('dtype', [np.float32, np.float64])
def test_fixed_batch_normalization_equals_chainers(shape, dtype):
    """Stored statistics (use_global_stats, test mode), a tiny variance
    and a mean far from 0 included; the input gradient is Chainer's."""
    rng = np.random.RandomState(6)
    c = shape[1]
    x = (rng.randn(*shape) * 3 + 50).astype(dtype)
    mean = (rng.randn(c) + 50).astype(np.float32)
    var = np.exp(rng.uniform(-8, 3, c)).astype(np.float32)
    eps = 1e-5

    def theirs(x):
        one, zero = np.ones(c, dtype), np.zeros(c, dtype)
        return F.fixed_batch_normalization(
            x, one, zero, mean.astype(dtype), var.astype(dtype), eps=eps)
    assert_same_as_chainer(
        lambda x: K.fixed_batch_normalization(x, mean, var, eps), theirs,
        (x,))
    gradient_check.check_backward(
        lambda x: K.fixed_batch_normalization(x, mean, var, eps),
        (x.astype(np.float64),), rng.randn(*shape), dtype=np.float64)


@pytest.mark.parametrize('shape', BN_SHAPES)
@pytest.mark.parametrize('dtype', [np.float32, np.float64])
def test_batch_normalization_equals_chainers(shape, dtype):
    rng = np.random.RandomState(7)
    c = shape[1]
    x = (rng.randn(*shape) * 2 + 3).astype(dtype)

    def theirs(x):
        return F.batch_normalization(x, np.ones(c, dtype),
                                     np.zeros(c, dtype), eps=2e-5)

    def ours(x):
        y = K.batch_normalization(x, 2e-5)
        assert isinstance(y.creator, K.BatchNormalization)
        return y
    if dtype == np.float64:
        assert_same_as_chainer(ours, theirs, (x,))
    else:
        # the input gradient cancels (it is orthogonal to 1 and x_hat), so
        # float32 results are held to float64's as closely as Chainer's own
        gy = rng.randn(*shape)
        truth = grads_of(theirs, [x.astype(np.float64)], gy)
        for fn in (ours, theirs):
            y, (gx,) = grads_of(fn, [x], gy.astype(dtype))
            assert y.dtype == gx.dtype == dtype
            errors = [np.abs(a - b).max() for a, b in
                      ((y, truth[0]), (gx, truth[1][0]))]
            if fn is theirs:
                assert errors[0] <= 4 * ours_errors[0] + 1e-6
                assert errors[1] * 4 + 1e-6 >= ours_errors[1]
            ours_errors = errors
    gradient_check.check_backward(
        lambda x: K.batch_normalization(x, 2e-5), (x.astype(np.float64),),
        rng.randn(*shape), dtype=np.float64, atol=1e-5, rtol=1e-4)


def test_affine_rejects_a_wrong_channel_count():
    x = np.ones((2, 3, 4, 4), np.float32)
    with pytest.raises(type_check.InvalidType):
        K.channel_affine(x, np.ones(4, np.float32))
    with pytest.raises(type_check.InvalidType):
        K.channel_affine(x, np.ones(3, np.float64))


@pytest.mark.parametrize('train,keep', [(False, False), (True, True),
                                        (True, False)])
def test_caffe_batchnorm_and_scale_links_equal_chainers(train, keep):
    """The links of graph nets: same outputs, input and Scale parameter
    gradients, and (batch statistics) the same stored-statistics update."""
    rng = np.random.RandomState(8)
    x = rng.randn(4, 3, 5, 5).astype(np.float32) * 2 + 1
    gy = rng.randn(*x.shape).astype(np.float32)
    results = []
    for kernels in (True, False):
        bn = CaffeBatchNorm(3)
        bn.mean[...], bn.var[...] = [0.5, -1, 2], [0.25, 4, 1]
        bn.keep_statistics = keep
        scale = CaffeScale((3,), bias_term=True)
        scale.W.array[...], scale.b.array[...] = [2, -1, 0.5], [1, 0, -3]
        scale.cleargrads()
        xv = chainer.Variable(x.copy())
        with chainer.using_config('train', train), \
                chainer.using_config(K.CONFIG_KEY, kernels):
            y = scale(bn(xv))
            kinds = {type(n).__name__ for n in graph_nodes(y)}
            y.grad = gy.copy()
            y.backward()
        results.append((y.array, xv.grad, scale.W.grad, scale.b.grad,
                        bn.mean.copy(), bn.var.copy(), kinds))
    ours, theirs = results
    for a, b in zip(ours[:6], theirs[:6]):
        assert relative_error(a, b) < 1e-5
    assert 'ChannelAffine' in ours[6] and 'ChannelAffine' not in theirs[6]


# ---------------------------------------------------------------- LRN
@pytest.mark.parametrize('shape,n,k,alpha,beta', [
    ((2, 7, 5, 5), 5, 1.0, 1e-4 / 5 * 1e4, 0.75),  # AlexNet's (alpha x1e4
    ((2, 7, 5, 5), 5, 1.0, 2e-5, 0.75),            # to matter at unit x)
    ((2, 3, 4, 4), 5, 2.0, 0.3, 0.6),    # fewer channels than the window
    ((3, 6), 3, 1.5, 0.2, 1.0),          # 2-D input, another beta
])
@pytest.mark.parametrize('dtype', [np.float32, np.float64])
def test_lrn_equals_chainers(shape, n, k, alpha, beta, dtype):
    rng = np.random.RandomState(13)
    x = (rng.randn(*shape) * 3).astype(dtype)

    def ours(x):
        y = K.local_response_normalization(x, n, k, alpha, beta)
        assert isinstance(y.creator, K.LocalResponseNormalization)
        return y
    assert_same_as_chainer(
        ours, lambda x: F.local_response_normalization(x, n, k, alpha, beta),
        (x,))
    gradient_check.check_backward(
        lambda x: K.local_response_normalization(x, n, k, alpha, beta),
        (x.astype(np.float64),), rng.randn(*shape), dtype=np.float64)


def test_caffe_lrn_uses_the_kernel_on_the_cpu_only_when_switched_on():
    from finetune.models.functions import caffe_lrn
    x = np.random.RandomState(14).randn(1, 6, 3, 3).astype(np.float32)
    assert isinstance(caffe_lrn(x).creator, K.LocalResponseNormalization)
    with K.chainer_functions():
        y = caffe_lrn(x)
    assert not isinstance(y.creator, K.LocalResponseNormalization)


# ------------------------------------------------------- padded pooling
@settings(derandomize=True, max_examples=40, deadline=None)
@given(size=st.tuples(st.integers(2, 12), st.integers(2, 12)),
       kernel=st.integers(2, 4), stride=st.integers(1, 3),
       pad=st.integers(0, 1), ties=st.booleans(),
       channel_major=st.booleans())
def test_padded_max_pooling_equals_chainers(size, kernel, stride, pad, ties,
                                            channel_major):
    """Caffe max pooling whose windows reach past the input (padding,
    ceil rounding: ResNet's pool1 3x3/2 on 112x112) runs TiledMaxPooling2D
    on a -inf padded input: the same maxima and gradients (ties: to the
    first maximum) as Chainer's im2col path; also on a channel-major input
    (a convolution's output), whose memory order the output keeps."""
    from finetune.models.functions import TiledMaxPooling2D
    from finetune.models.functions import caffe_pooling_2d
    pad = min(pad, kernel - 1)  # Caffe requires pad < kernel
    h, w = (max(n, kernel) for n in size)
    rng = np.random.RandomState(h * 13 + w)
    x = (rng.randint(0, 3, (2, 3, h, w)) if ties else
         rng.randn(2, 3, h, w)).astype(np.float32)
    if channel_major:
        x = np.ascontiguousarray(x.transpose(1, 0, 2, 3)).transpose(
            1, 0, 2, 3)
    args = ('max', (kernel, kernel), (stride, stride), (pad, pad))

    def ours(x):
        y = caffe_pooling_2d(x, *args)
        assert isinstance(y.creator, TiledMaxPooling2D)
        return y

    def theirs(x):
        with K.chainer_functions():
            return caffe_pooling_2d(x, *args)
    # exact: maxima are copies, and a window past the input without pad
    # (Caffe pads only when pad > 0) is -inf on both paths
    gy = rng.randn(*theirs(x).shape).astype(np.float32)
    (y, (gx,)), (y_ref, (gx_ref,)) = (grads_of(fn, [x], gy)
                                      for fn in (ours, theirs))
    np.testing.assert_array_equal(y, y_ref)
    np.testing.assert_array_equal(gx, gx_ref)


# ---------------------------------------------------------------- models
ALEXNET_CHECK = """
import json, sys
import chainer, chainer.functions as F, numpy as np
from finetune.models import AlexNet
from finetune.models import cpu_kernels as K

rng = np.random.RandomState(9)
with chainer.using_config('dtype', np.float64):
    net = AlexNet(n_classes=10, dropout=0.0,
                  initialW=chainer.initializers.LeCunNormal(rng=rng))
x = rng.uniform(-120, 120, (2, 3, 227, 227))
t = rng.randint(0, 10, 2).astype(np.int32)
with chainer.using_config('train', False):
    y = net(x)
kinds, todo, seen = [], [y.creator_node], set()
while todo:
    node = todo.pop()
    if node is None or id(node) in seen:
        continue
    seen.add(id(node))
    kinds.append(type(node).__name__)
    todo.extend(v.creator_node for v in node.inputs)
del y

def gradients(kernels):
    net.cleargrads()
    with chainer.using_config('train', True), \\
            chainer.using_config(K.CONFIG_KEY, kernels):
        F.softmax_cross_entropy(net(x), t).backward()
    return {n: net[n].W.grad.copy() for n in net.layer_names}

ours, theirs = gradients(True), gradients(False)
errors = {n: float(np.abs(ours[n] - theirs[n]).max() /
                   np.abs(theirs[n]).max()) for n in net.layer_names}
json.dump({'kinds': kinds, 'errors': errors,
           'nonzero': all(np.abs(ours[n]).max() > 0 for n in ours)},
          sys.stdout)
"""


def test_alexnet_uses_the_kernels_and_matches_chainers_training_step():
    """A full AlexNet training step (dropout 0): every layer's weight
    gradient equals the one of Chainer's functions within 1e-9 of its
    largest value, and the forward runs the project's convolution and LRN
    nodes. float64 (in float32, rounding differences of 1e-7 flip near-tied
    maxima of the poolings, which moves gradients), with seeded weights, in
    a child process: its 1.5 GB of weights and gradients would otherwise
    raise this process's peak RSS, which children forked later inherit
    (tests that measure a child's peak)."""
    result = subprocess.run([sys.executable, '-c', ALEXNET_CHECK],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    out = json.loads(result.stdout)
    assert out['kinds'].count('Convolution2D') == 5
    assert out['kinds'].count('LocalResponseNormalization') == 2
    assert 'Convolution2DFunction' not in out['kinds']
    assert out['nonzero']
    assert sorted(out['errors']) == sorted(LAYER_NAMES)
    for name, error in out['errors'].items():
        assert error < 1e-9, (name, error)


def test_resnet_small_matches_opencv_with_the_kernels(small_nets):
    """A graph net with 1x1 stride-2 projections, BatchNorm and Scale (one
    NormalizedAffine): the kernels' forward equals OpenCV's dnn within
    1e-5."""
    files = small_nets['resnet_small']
    model = CaffeGraph.from_prototxt(files['prototxt'])
    import_caffemodel(model, files['caffemodel'])
    rng = np.random.RandomState(10)
    x = rng.uniform(-120, 120, (2,) + model.net_input_shape).astype(
        np.float32)
    with chainer.using_config('train', False):
        y = model(x)
    kinds = {type(n).__name__ for n in graph_nodes(y)}
    assert {'Convolution2D', 'NormalizedAffine'} <= kinds
    net = cv2.dnn.readNetFromCaffe(files['prototxt'], files['caffemodel'])
    net.setInput(x)
    ref = net.forward('fc5').reshape(len(x), -1)
    assert relative_error(y.array, ref) < 1e-5


def test_links_without_a_fast_path_are_called_as_they_are():
    """call_link passes any other link (Linear, a 2-input link) through."""
    lin = L.Linear(4, 3)
    x = np.random.RandomState(11).randn(2, 4).astype(np.float32)
    np.testing.assert_array_equal(K.call_link(lin, x).array, lin(x).array)
    conv = L.Convolution2D(None, 3, 3)  # W initialized on the first call
    x4 = np.random.RandomState(12).randn(1, 2, 5, 5).astype(np.float32)
    y = K.call_link(conv, x4)
    assert y.shape == (1, 3, 3, 3)
    np.testing.assert_allclose(y.array, conv(x4).array, rtol=1e-6)
