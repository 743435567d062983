"""A Chain built from any deploy prototxt: a DAG of Caffe layers.

Supported types (V2 names; a V1 ``layers`` net is upgraded first, so its
enum types work too): Input, Convolution (groups, dilation, ``_h``/``_w``),
Pooling (MAX/AVE, global, Caffe's ceil or floor rounding), LRN
(ACROSS_CHANNELS/WITHIN_CHANNEL), InnerProduct, Dropout, ReLU
(``negative_slope``), PReLU, Sigmoid, TanH, Softmax, Concat, Eltwise (SUM
with ``coeff``, PROD, MAX), BatchNorm, Scale (learned, with ``bias_term``;
or the two-bottom form ``scale_param { axis: 0 }`` without bias), Split,
Slice and Flatten. Layers may run in place, branch and merge in any way
(ResNet, GoogLeNet, SqueezeNet); layers run in prototxt order. Any other
layer type is an error that lists every such layer.

Every numeric field that makes a shape (kernel, stride, pad, dilation,
group, num_output, local_size, axes, input dims) or a value (alpha, eps,
dropout_ratio, coeff...) is checked as its layer is planned, and each
parameter array, each output blob and the parameters in all are sized
from the shapes before any link is made (bounds and reasons in
:mod:`finetune.models.caffe_params`): a bad value is one line naming the
prototxt, the layer and the field, never a ZeroDivisionError or a
MemoryError.

All arrays are float32 (or the parameters' dtype, e.g. float16); shapes
are Caffe's (N, C, H, W).
"""
import contextlib
import functools
import itertools
import math

import chainer
import chainer.functions as F
import chainer.links as L
import numpy as np
from google.protobuf import text_format

from finetune.caffe.caffemodel import MAX_LAYERS
from finetune.caffe.caffemodel import parse_net_text
from finetune.caffe.caffemodel import prototxt_net
from finetune.caffe.caffemodel import read_prototxt_param
from finetune.caffe.caffemodel import upgrade_v1_net
from finetune.common.errors import CaffeModelError
from finetune.models import caffe_params
from finetune.models.caffe_params import LayerError as _LayerError
from finetune.models.caffe_params import at_least
from finetune.models.caffe_params import check_array
from finetune.models.caffe_params import finite
from finetune.models.caffe_params import pair
from finetune.models.caffe_params import shape_text
from finetune.models.caffe_params import size_text
from finetune.models.cpu_kernels import batch_normalization
from finetune.models.cpu_kernels import call_link
from finetune.models.cpu_kernels import channel_affine
from finetune.models.cpu_kernels import fixed_batch_normalization
from finetune.models.cpu_kernels import normalized_affine
from finetune.models.cpu_kernels import stored_statistics
from finetune.models.cpu_kernels import use_cpu_kernels
from finetune.models.functions import caffe_lrn
from finetune.models.functions import caffe_pooling_2d
from finetune.models.functions import pooled_size

SUPPORTED_TYPES = ('Input', 'Convolution', 'Pooling', 'LRN', 'InnerProduct',
                   'Dropout', 'ReLU', 'PReLU', 'Sigmoid', 'TanH', 'Softmax',
                   'Concat', 'Eltwise', 'BatchNorm', 'Scale', 'Split',
                   'Slice', 'Flatten')
#: Layer types whose Chain link holds weights (Caffe blobs).
PARAM_TYPES = ('Convolution', 'InnerProduct', 'BatchNorm', 'Scale', 'PReLU')


class CaffeBatchNorm(chainer.Link):
    """Caffe's BatchNorm: ``(x - mean) / sqrt(var + eps)`` per channel.

    Caffe stores three blobs: the mean and variance sums and a scale factor
    they are divided by (0 meaning mean and variance 0). This link stores
    the quotients as the persistents ``mean`` and ``var`` (float32, (C,))
    and the factor as ``factor`` (float32, (1,)); no parameters (Caffe's
    learned gamma/beta live in a following Scale layer). A new link has
    mean 0, variance 1 and factor 0.

    With ``chainer.config.train`` False the stored statistics are used.
    In training the batch statistics are (axis 1 is the channel axis) and
    the stored ones are updated as Caffe does: ``factor <- maf * factor +
    1``, ``mean <- (maf * factor_old * mean + batch_mean) / factor`` and
    the same for the variance with the unbiased batch variance (``maf`` is
    ``moving_average_fraction``, 0.999 by default) -- unless
    :attr:`keep_statistics` is set: then training uses and keeps the stored
    statistics (Caffe's ``use_global_stats: true``).

    Attributes:
        keep_statistics (bool): starts as the prototxt's
            ``use_global_stats``; :meth:`disable_update` (what freezing a
            layer calls) sets it, :meth:`enable_update` restores the
            prototxt's value. The training side may also set it directly.
    """

    caffe_type = 'BatchNorm'

    def __init__(self, channels, eps=1e-5, moving_average_fraction=0.999,
                 use_global_stats=False):
        super().__init__()
        self.eps = float(eps)
        self.moving_average_fraction = float(moving_average_fraction)
        self.use_global_stats = bool(use_global_stats)
        self.keep_statistics = self.use_global_stats
        self.add_persistent('mean', np.zeros(channels, np.float32))
        self.add_persistent('var', np.ones(channels, np.float32))
        self.add_persistent('factor', np.zeros(1, np.float32))

    def disable_update(self):
        """Freeze: also keep the statistics in training."""
        super().disable_update()
        self.keep_statistics = True

    def enable_update(self):
        """Unfreeze: statistics as the prototxt says again."""
        super().enable_update()
        self.keep_statistics = self.use_global_stats

    def caffe_blob_shapes(self):
        return [self.mean.shape, self.var.shape, (1,)]

    def from_caffe_blobs(self, blobs):
        """``{persistent: array}`` from Caffe's (mean sum, variance sum,
        factor) blobs, divided as Caffe's test phase does."""
        mean, var, factor = (np.asarray(b, np.float32) for b in blobs)
        scale = np.float32(0) if factor[0] == 0 else np.float32(1) / factor[0]
        return {'mean': mean * scale, 'var': var * scale,
                'factor': factor.reshape(1).copy()}

    def caffe_blobs(self):
        """Caffe blobs computing the same: (mean, variance, 1)."""
        cpu = chainer.backend.CpuDevice()
        return [cpu.send(self.mean).astype(np.float32),
                cpu.send(self.var).astype(np.float32),
                np.ones(1, np.float32)]

    @property
    def uses_stored_statistics(self):
        """Whether a call now normalizes with the stored statistics (not
        the batch's): outside training, or with :attr:`keep_statistics`."""
        return not chainer.config.train or self.keep_statistics

    def stored_normalization(self, dtype):
        """(mean, inv_std): (C,) arrays of ``dtype``, the stored mean and
        ``1 / sqrt(var + eps)`` (computed in float64)."""
        return stored_statistics(self.mean, self.var, self.eps, dtype)

    def forward(self, x):
        # cuDNN refuses eps < 1e-5 (CUDNN_BN_MIN_EPSILON); Caffe does not
        with (chainer.using_config('use_cudnn', 'never') if self.eps < 1e-5
              else contextlib.nullcontext()):
            if chainer.config.train and not self.keep_statistics:
                self._update_statistics(getattr(x, 'array', x))
                return batch_normalization(x, self.eps)
            return fixed_batch_normalization(x, self.mean, self.var,
                                             self.eps)

    def _update_statistics(self, x):
        axes = (0,) + tuple(range(2, x.ndim))
        x = x.astype(np.float32, copy=False)
        batch_mean = x.mean(axis=axes)
        batch_var = x.var(axis=axes)
        m = x.size // self.mean.shape[0]
        correction = m / (m - 1.0) if m > 1 else 1.0
        kept = self.moving_average_fraction * self.factor
        factor = kept + 1
        self.mean[...] = (kept * self.mean + batch_mean) / factor
        self.var[...] = (kept * self.var + correction * batch_var) / factor
        self.factor[...] = factor


def _along(w, x, axis):
    """``w`` broadcast to ``x``'s shape, its axes at ``axis``..."""
    shape = (1,) * axis + tuple(w.shape) + (1,) * (x.ndim - axis - w.ndim)
    return F.broadcast_to(F.reshape(w, shape), x.shape)


class CaffeScale(chainer.Link):
    """Caffe's Scale with a learned scale: ``x * W (+ b)``.

    ``W`` (and ``b`` with ``bias_term``) have the shape of the input axes
    ``axis`` to ``axis + num_axes`` (the channels, (C,), by default) and
    are broadcast over the others. New links hold W = 1, b = 0.
    """

    caffe_type = 'Scale'

    def __init__(self, shape, axis=1, bias_term=False):
        super().__init__()
        self.axis = axis
        with self.init_scope():
            self.W = chainer.Parameter(1.0, tuple(shape))
            self.b = chainer.Parameter(0.0, tuple(shape)) \
                if bias_term else None

    def caffe_blob_shapes(self):
        return [p.shape for p in (self.W, self.b) if p is not None]

    def from_caffe_blobs(self, blobs):
        return dict(zip(('W', 'b'), blobs))

    def caffe_blobs(self):
        return _param_blobs(self.W, self.b)

    @property
    def per_channel(self):
        """Whether W (and b) are (C,) along axis 1."""
        return self.axis == 1 and self.W.ndim == 1

    def after_normalization(self, x, mean, inv_std):
        """This layer applied to ``(x - mean) * inv_std`` (constant (C,)
        arrays: a BatchNorm's
        :meth:`CaffeBatchNorm.stored_normalization`), in one pass over x
        (:func:`~finetune.models.cpu_kernels.normalized_affine`). Needs
        :attr:`per_channel`."""
        return normalized_affine(x, mean, inv_std, self.W, self.b)

    def forward(self, x):
        if self.per_channel:
            return channel_affine(x, self.W, self.b)
        y = x * _along(self.W, x, self.axis)
        if self.b is not None:
            y = y + _along(self.b, x, self.axis)
        return y


class CaffePReLU(chainer.Link):
    """Caffe's PReLU: ``max(x, 0) + W * min(x, 0)`` with one slope per
    channel, W (C,), or one for all (``channel_shared``), W (1,). New
    links hold Caffe's default slope 0.25."""

    caffe_type = 'PReLU'

    def __init__(self, channels, channel_shared=False):
        super().__init__()
        self.channels = channels
        with self.init_scope():
            self.W = chainer.Parameter(
                0.25, (1,) if channel_shared else (channels,))

    def caffe_blob_shapes(self):
        return [self.W.shape]

    def from_caffe_blobs(self, blobs):
        return {'W': blobs[0]}

    def caffe_blobs(self):
        return _param_blobs(self.W)

    def forward(self, x):
        slope = self.W
        if slope.shape[0] != x.shape[1]:
            slope = F.broadcast_to(slope, (x.shape[1],))
        return F.prelu(x, slope)


def _param_blobs(*params):
    cpu = chainer.backend.CpuDevice()
    return [cpu.send(p.array).astype(np.float32)
            for p in params if p is not None]


# --- geometry ---------------------------------------------------------------

def _conv_geometry(p):
    """(kernel, stride, pad, dilation), each (h, w), of a Convolution."""
    if p.axis != 1:
        raise _LayerError('axis %d: only axis 1 is supported' % p.axis)
    return (pair(p, 'kernel_size'), pair(p, 'stride', 1),
            pair(p, 'pad', 0, minimum=0), pair(p, 'dilation', 1))


def _pool_geometry(p, size):
    """(kernel, stride, pad), each (h, w), of a Pooling over ``size``."""
    if p.global_pooling:
        if any(p.HasField(f) for f in ('kernel_size', 'kernel_h',
                                       'kernel_w')):
            raise _LayerError('global_pooling takes no kernel_size')
        if pair(p, 'stride', 1) != (1, 1) or pair(p, 'pad', 0, 0) != (0, 0):
            raise _LayerError('global_pooling needs stride 1 and pad 0')
        return tuple(size), (1, 1), (0, 0)
    kernel = pair(p, 'kernel_size')
    pad = pair(p, 'pad', 0, minimum=0)
    if pad[0] >= kernel[0] or pad[1] >= kernel[1]:
        raise _LayerError('pad %s must be smaller than the kernel %s'
                          % (shape_text(pad), shape_text(kernel)))
    return kernel, pair(p, 'stride', 1), pad


def _input_shape(net, source):
    shapes = [s for s in net.inputs.values() if s]
    if len(net.inputs) != 1 or len(shapes) != 1 or len(shapes[0]) != 4:
        raise CaffeModelError(
            '%s: a deploy net needs exactly one 4-D input (N, C, H, W); '
            'found %s' % (source, net.inputs or 'none'))
    name = next(iter(net.inputs))
    layer = next((l for l in net.layers if l.type == 'Input'
                  and name in l.top), None)
    where = ('layer %s (Input)' % layer.name if layer is not None
             else 'input %s' % name)
    try:
        for i, dim in enumerate(shapes[0]):
            at_least(dim, 'dim %d of the shape' % i)
        check_array(shapes[0][1:], 'one example of the shape')
    except _LayerError as e:
        raise CaffeModelError('%s: %s: %s' % (source, where, e)) from None
    return tuple(int(d) for d in shapes[0][1:])


def _axis(axis, ndim, what):
    """A Caffe axis of an ``ndim``-D blob (batch included) as 0..ndim-1."""
    full = axis + ndim if axis < 0 else axis
    if not 0 <= full < ndim:
        raise _LayerError('%s %d is out of range for a %d-D blob'
                          % (what, axis, ndim))
    if full == 0:
        raise _LayerError('%s 0 (the batch axis) is not supported' % what)
    return full


def _same_shapes(shapes):
    if any(s != shapes[0] for s in shapes):
        raise _LayerError('inputs differ in shape: %s'
                          % ', '.join('x'.join(map(str, s)) for s in shapes))


# --- what each layer computes -----------------------------------------------
# Each runner maps (graph, list of inputs) to the list of outputs; links are
# looked up by name at call time, so copies of the Chain work.

def _run_link(graph, inputs, name):
    return [call_link(graph[name], *inputs)]


def _run_unary(graph, inputs, fn):
    return [fn(inputs[0])]


def _run_concat(graph, inputs, axis):
    return [F.concat(inputs, axis)]


def _run_slice(graph, inputs, points, axis):
    return list(F.split_axis(inputs[0], list(points), axis,
                             force_tuple=True))


def _run_split(graph, inputs, n):
    return [inputs[0]] * n


def _run_eltwise(graph, inputs, operation, coeff):
    y = inputs[0]
    if operation == 'SUM':
        y = y if coeff[0] == 1 else coeff[0] * y
        for c, x in zip(coeff[1:], inputs[1:]):
            y = y + (x if c == 1 else c * x)
    elif operation == 'PROD':
        for x in inputs[1:]:
            y = y * x
    else:
        for x in inputs[1:]:
            y = F.maximum(y, x)
    return [y]


def _run_flatten(graph, inputs, start, end):
    x = inputs[0]
    shape = x.shape[:start] + (-1,) + x.shape[end + 1:]
    return [F.reshape(x, shape)]


def _run_scale_by(graph, inputs):
    x, s = inputs
    return [x * _along(s, x, 0)]


class _Node:
    """One layer to run: its name, type, inputs and outputs (value ids)."""

    __slots__ = ('name', 'type', 'bottoms', 'tops', 'run')

    def __init__(self, name, kind, bottoms, tops, run):
        self.name, self.type = name, kind
        self.bottoms, self.tops, self.run = bottoms, tops, run


class CaffeGraph(chainer.Chain):
    """A classifier Chain made from a Caffe deploy definition (any DAG).

    ``forward(x)`` maps float32 (N, C, H, W) input to the net's output:
    the logits (N, n_classes) of the classifier (a Softmax whose output
    nothing reads is left out, as in AlexNet's; outputs of more axes, such as
    SqueezeNet's (N, K, 1, 1), are flattened to (N, K)). Links are named
    after the Caffe layers that hold weights (Convolution2D, Linear,
    :class:`CaffeBatchNorm`, :class:`CaffeScale`, :class:`CaffePReLU`), so
    :func:`finetune.caffe.import_caffemodel` matches them.

    Attributes:
        layer_names (tuple of str): the layers with weights, in prototxt
            order: the names ``--freeze``/``--replace`` take and the links
            ``solver.set_caffe_lr_policy`` iterates (every name is a link;
            BatchNorm links have no parameters, only persistents).
        layer_order (tuple of str): every layer that runs, prototxt order
            (Input and a final output-only Softmax excluded).
        classifier_name (str): the last InnerProduct (the last Convolution in a
            net without one, e.g. SqueezeNet): ``n_classes`` sets its
            num_output.
        n_classes (int): size of the output per example.
        net_input_shape (tuple): (C, H, W) of the declared input.

    Cut points: ``forward(x, start, stop)`` runs the layers between two
    cuts in prototxt order. A cut is ``None`` (the input, or the end), an
    int k (just before ``layer_names[k]``; ``len(layer_names)`` is the end)
    or any layer name of ``layer_order`` (just before that layer). A cut is
    valid when exactly one blob crosses it: that blob is what ``forward(x,
    stop=k)`` returns and ``forward(h, start=k)`` takes. See
    :meth:`cut_blobs`, :meth:`valid_cuts` and :meth:`feeds`.

    Args:
        net_param: a ``caffe.NetParameter`` message (deploy definition, V1
            or V2).
        n_classes (int): if given, replaces the classifier's num_output
            (the new head of a fine-tuned net).
        source (str): file name used in error messages.
        initialW: Chainer initializer of the Convolution/InnerProduct
            weights (Chainer's default when ``None``;
            ``chainer.initializers.Zero()`` skips drawing randoms when
            weights are about to be loaded).

    Raises:
        CaffeModelError: unsupported layer types (all listed), a blob read
            before it is written, unusable parameters or shapes, or not
            exactly one input and one output.
    """

    #: The ``arch`` of its model files (:mod:`finetune.models.model_file`).
    arch = 'caffe_graph'

    def __init__(self, net_param, n_classes=None, source='prototxt',
                 initialW=None):
        super().__init__()
        if len(net_param.layer) + len(net_param.layers) > MAX_LAYERS:
            raise CaffeModelError('%s: more than %d layers' % (source,
                                                                MAX_LAYERS))
        net_param = upgrade_v1_net(net_param)
        net = prototxt_net(net_param)
        unsupported = ['%s (%s)' % (l.name, l.type) for l in net.layers
                       if l.type not in SUPPORTED_TYPES]
        if unsupported:
            raise CaffeModelError('%s: unsupported Caffe layer types: %s'
                                  % (source, ', '.join(unsupported)))
        self._source = source
        self.net_input_shape = _input_shape(net, source)
        layers = [l.param for l in net.layers if l.type != 'Input']
        classifier = _classifier(layers)
        if n_classes is not None:
            if classifier is None:
                raise CaffeModelError('%s: no InnerProduct or Convolution '
                                      'layer to give %d outputs'
                                      % (source, n_classes))
            _num_output(classifier).num_output = n_classes
        self.classifier_name = (classifier.name if classifier is not None
                                else None)
        self.net_param = net_param
        self._build(layers, next(iter(net.inputs)), initialW)

    # -- construction --------------------------------------------------------

    def _build(self, layers, input_blob, initialW):
        # values: the versions of blobs (in-place layers make new ones);
        # value 0 is the input. Every layer is checked and sized first
        # (self._planned); the links are made only once the whole net fits.
        self._blobs = [input_blob]
        self._producer = [-1]
        self._planned = []
        shapes = [self.net_input_shape]
        latest = {input_blob: 0}
        nodes = []
        for layer in layers:
            unknown = [b for b in layer.bottom if b not in latest]
            if unknown:
                raise CaffeModelError(
                    '%s: layer %s reads %s, which no earlier layer writes'
                    % (self._source, layer.name, ', '.join(unknown)))
            bottoms = [latest[b] for b in layer.bottom]
            try:
                run, out_shapes = self._make(
                    layer, [shapes[v] for v in bottoms], initialW)
                if len(out_shapes) != len(layer.top):
                    raise _LayerError('has %d tops, expected %d'
                                      % (len(layer.top), len(out_shapes)))
                out_shapes = [tuple(int(d) for d in shape)
                              for shape in out_shapes]
                for top, shape in zip(layer.top, out_shapes):
                    at_least(min(shape, default=1), 'each output dimension')
                    check_array(shape, 'one example of its output %s' % top)
            except _LayerError as e:
                raise CaffeModelError('%s: layer %s (%s): %s'
                                      % (self._source, layer.name, layer.type,
                                         e)) from None
            tops = []
            for blob, shape in zip(layer.top, out_shapes):
                tops.append(len(self._blobs))
                latest[blob] = len(self._blobs)
                self._blobs.append(blob)
                self._producer.append(len(nodes))
                shapes.append(shape)
            nodes.append(_Node(layer.name, layer.type, bottoms, tops, run))
        self._make_links()
        nodes = self._drop_final_softmax(nodes)
        self._nodes = nodes
        self._shapes = shapes
        self._wire(nodes)
        self.layer_order = tuple(n.name for n in nodes)
        self.layer_names = tuple(n.name for n in nodes
                                 if n.name in self._children)
        self.n_classes = math.prod(shapes[self._output])

    def _make_links(self):
        """Make the planned links once their parameters fit in
        :data:`~finetune.models.caffe_params.MAX_PARAMETER_BYTES`.

        Each link's gradient arrays are freed as soon as it exists (Chainer
        fills one NaN array per parameter; backward makes them again), so
        building a net costs its weights, not twice that.
        """
        sizes = {name: nbytes for name, _, nbytes in self._planned}
        total = sum(sizes.values())
        limit = caffe_params.MAX_PARAMETER_BYTES
        if total > limit:
            largest = max(sizes, key=sizes.get)
            raise CaffeModelError(
                '%s: the parameters would take %s (the largest, layer %s: '
                '%s); the limit is %s' % (
                    self._source, size_text(total), largest,
                    size_text(sizes[largest]), size_text(limit)))
        for name, make, _ in self._planned:
            link = make()
            link.cleargrads()
            with self.init_scope():
                setattr(self, name, link)
        del self._planned

    def _drop_final_softmax(self, nodes):
        """Leave out Softmax layers whose output nothing reads."""
        read = {v for n in nodes for v in n.bottoms}
        kept = [n for n in nodes
                if not (n.type == 'Softmax' and not read & set(n.tops))]
        for i, node in enumerate(kept):
            for v in node.tops:
                self._producer[v] = i
        return kept

    def _wire(self, nodes):
        """Output blob, each value's last reader and the blobs crossing
        each cut (:meth:`_crossing`: values made before layer p and
        read at p or later)."""
        live = {0} | {v for n in nodes for v in n.tops}
        last_read = {}
        for i, node in enumerate(nodes):
            for v in node.bottoms:
                last_read[v] = i
        outputs = sorted(live - set(last_read))
        if len(outputs) != 1:
            raise CaffeModelError(
                '%s: a deploy net needs exactly one output blob; found %s'
                % (self._source, ', '.join(self._blobs[v] for v in outputs)
                   or 'none'))
        self._output = outputs[0]
        last_read[self._output] = len(nodes)
        # how many values cross each cut, and the sum of their ids (the id
        # itself when one does): O(layers + values), also for a crafted net
        # whose every value lives to the end
        self._live = sorted(live & set(last_read))
        counts = [0] * (len(nodes) + 2)
        sums = [0] * (len(nodes) + 2)
        for v in self._live:
            for p, sign in ((self._producer[v] + 1, 1),
                            (last_read[v] + 1, -1)):
                counts[p] += sign
                sums[p] += sign * v
        self._crossing_count = list(itertools.accumulate(counts))
        self._crossing_sum = list(itertools.accumulate(sums))
        self._last_read = last_read
        self._free_after = [[] for _ in nodes]
        for v, i in last_read.items():
            if i < len(nodes):
                self._free_after[i].append(v)

    def _add_link(self, name, make, param_shapes, field):
        """Plan the link ``make()`` (made by :meth:`_make_links`) whose
        parameters have ``param_shapes``, each refused beyond
        :data:`~finetune.models.caffe_params.MAX_ARRAY_BYTES` naming
        ``field``; returns the layer's runner."""
        if hasattr(self, name) or name in (n for n, _, _ in self._planned):
            raise _LayerError('the name clashes with an attribute of the '
                              'Chain; rename the layer')
        nbytes = sum(check_array(shape, field) for shape in param_shapes)
        self._planned.append((name, make, nbytes))
        return functools.partial(_run_link, name=name)

    def _make(self, layer, shapes, initialW):
        """(runner, output shapes without the batch axis) of one layer."""
        kind = layer.type
        shape = shapes[0] if shapes else None
        if kind not in ('Concat', 'Eltwise', 'Scale') and len(shapes) != 1:
            raise _LayerError('has %d bottoms, expected 1' % len(shapes))
        unary = functools.partial(functools.partial, _run_unary)
        if kind == 'Convolution':
            return self._convolution(layer, shape, initialW)
        if kind == 'InnerProduct':
            return self._inner_product(layer, shape, initialW)
        if kind == 'Pooling':
            return self._pooling(layer, shape)
        if kind == 'LRN':
            p = layer.lrn_param
            _need_image(shape)
            if at_least(p.local_size, 'local_size') % 2 == 0:
                raise _LayerError('local_size must be odd, got %d'
                                  % p.local_size)
            if p.norm_region == p.ACROSS_CHANNELS:
                if finite(p.k, 'k') <= 0:
                    raise _LayerError('k must be > 0, got %r' % p.k)
                if p.local_size > caffe_params.MAX_LRN_SIZE:
                    raise _LayerError('local_size %d: the limit is %d'
                                      % (p.local_size,
                                         caffe_params.MAX_LRN_SIZE))
            else:
                _check_patches(shape[0], (p.local_size,) * 2, shape[1:])
            return unary(fn=functools.partial(
                caffe_lrn, local_size=p.local_size,
                alpha=finite(p.alpha, 'alpha', low=0),
                beta=finite(p.beta, 'beta'), k=p.k,
                region=p.NormRegion.Name(p.norm_region))), [shape]
        if kind == 'ReLU':
            slope = finite(layer.relu_param.negative_slope,
                           'negative_slope')
            fn = functools.partial(F.leaky_relu, slope=slope) if slope \
                else F.relu
            return unary(fn=fn), [shape]
        if kind in ('Sigmoid', 'TanH'):
            return unary(fn=F.sigmoid if kind == 'Sigmoid' else F.tanh), \
                [shape]
        if kind == 'Dropout':
            ratio = finite(layer.dropout_param.dropout_ratio,
                           'dropout_ratio', low=0, high=1, high_open=True)
            return unary(fn=functools.partial(F.dropout, ratio=ratio)), \
                [shape]
        if kind == 'Softmax':
            axis = _axis(layer.softmax_param.axis, len(shape) + 1, 'axis')
            return unary(fn=functools.partial(F.softmax, axis=axis)), [shape]
        if kind == 'PReLU':
            p = layer.prelu_param
            slopes = (1,) if p.channel_shared else (_channels(shape),)
            return self._add_link(layer.name, functools.partial(
                CaffePReLU, _channels(shape), p.channel_shared), [slopes],
                'the slopes'), [shape]
        if kind == 'BatchNorm':
            p = layer.batch_norm_param
            channels = _channels(shape)
            return self._add_link(layer.name, functools.partial(
                CaffeBatchNorm, channels, finite(p.eps, 'eps', low=0),
                finite(p.moving_average_fraction, 'moving_average_fraction',
                       low=0, high=1), p.use_global_stats),
                [(channels,)] * 3, 'the statistics'), [shape]
        if kind == 'Scale':
            return self._scale(layer, shapes)
        if kind == 'Split':
            return functools.partial(_run_split, n=len(layer.top)), \
                [shape] * len(layer.top)
        if kind == 'Concat':
            return self._concat(layer, shapes)
        if kind == 'Slice':
            return self._slice(layer, shape)
        if kind == 'Eltwise':
            return self._eltwise(layer, shapes)
        return self._flatten(layer, shape)  # Flatten

    def _convolution(self, layer, shape, initialW):
        p = layer.convolution_param
        _need_image(shape)
        kernel, stride, pad, dilation = _conv_geometry(p)
        outputs = at_least(p.num_output, 'num_output')
        groups = at_least(p.group, 'group')
        if shape[0] % groups or outputs % groups:
            raise _LayerError('%d inputs and %d outputs do not split into '
                              '%d groups' % (shape[0], outputs, groups))
        span = [dl * (k - 1) + 1 for k, dl in zip(kernel, dilation)]
        out = [(n + 2 * pd - sp) // s + 1 for n, sp, s, pd
               in zip(shape[1:], span, stride, pad)]
        if min(out) < 1:
            raise _LayerError('the %s kernel (dilated) does not fit the %s '
                              'input padded by %s' % (
                                  shape_text(span), shape_text(shape[1:]),
                                  shape_text(pad)))
        _check_patches(shape[0], kernel, out)
        weights = (outputs, shape[0] // groups) + kernel
        return self._add_link(layer.name, functools.partial(
            L.Convolution2D, shape[0], outputs, kernel, stride, pad,
            nobias=not p.bias_term, dilate=dilation, groups=groups,
            initialW=initialW), [weights, (outputs,)],
            'num_output %d: the weights' % outputs), [(outputs, *out)]

    def _inner_product(self, layer, shape, initialW):
        p = layer.inner_product_param
        if _axis(p.axis, len(shape) + 1, 'axis') != 1:
            raise _LayerError('only axis 1 is supported')
        outputs = at_least(p.num_output, 'num_output')
        inputs = math.prod(shape)
        return self._add_link(layer.name, functools.partial(
            L.Linear, inputs, outputs, nobias=not p.bias_term,
            initialW=initialW), [(outputs, inputs), (outputs,)],
            'num_output %d: the weights' % outputs), [(outputs,)]

    def _pooling(self, layer, shape):
        p = layer.pooling_param
        _need_image(shape)
        if p.pool not in (p.MAX, p.AVE):
            raise _LayerError('only MAX and AVE pooling are supported')
        kernel, stride, pad = _pool_geometry(p, shape[1:])
        ceil = p.round_mode == p.CEIL
        out = [pooled_size(n, k, s, pd, ceil)
               for n, k, s, pd in zip(shape[1:], kernel, stride, pad)]
        if min(out) < 1:
            raise _LayerError('the %s kernel does not fit the %s input '
                              'padded by %s' % (
                                  shape_text(kernel), shape_text(shape[1:]),
                                  shape_text(pad)))
        _check_patches(shape[0], kernel, out)
        fn = functools.partial(
            caffe_pooling_2d, method='max' if p.pool == p.MAX else 'ave',
            kernel=kernel, stride=stride, pad=pad, ceil=ceil)
        return functools.partial(_run_unary, fn=fn), [(shape[0], *out)]

    def _scale(self, layer, shapes):
        p = layer.scale_param
        if len(shapes) == 2:
            x, s = shapes
            if p.axis != 0 or p.bias_term:
                raise _LayerError('the two-bottom form is supported with '
                                  'axis 0 and no bias_term only')
            # axis 0: the scale blob (N, ...) matches the leading axes
            if tuple(s) != tuple(x[:len(s)]):
                raise _LayerError('scale blob %s does not match the input '
                                  '%s' % (s, x))
            return _run_scale_by, [x]
        if len(shapes) != 1:
            raise _LayerError('has %d bottoms, expected 1 or 2'
                              % len(shapes))
        x = shapes[0]
        axis = _axis(p.axis, len(x) + 1, 'axis')
        end = len(x) + 1 if p.num_axes == -1 else axis + p.num_axes
        if p.num_axes < -1 or end > len(x) + 1:
            raise _LayerError('num_axes %d does not fit a %d-D input'
                              % (p.num_axes, len(x) + 1))
        weights = tuple(x[axis - 1:end - 1])
        return self._add_link(layer.name, functools.partial(
            CaffeScale, weights, axis, p.bias_term),
            [weights] * (1 + p.bias_term), 'the scales'), [x]

    def _concat(self, layer, shapes):
        p = layer.concat_param
        axis = p.concat_dim if p.HasField('concat_dim') else p.axis
        axis = _axis(axis, len(shapes[0]) + 1, 'axis')
        rest = [s[:axis - 1] + s[axis:] for s in shapes]
        _same_shapes(rest)
        out = list(shapes[0])
        out[axis - 1] = sum(s[axis - 1] for s in shapes)
        return functools.partial(_run_concat, axis=axis), [tuple(out)]

    def _slice(self, layer, shape):
        p = layer.slice_param
        axis = p.slice_dim if p.HasField('slice_dim') else p.axis
        axis = _axis(axis, len(shape) + 1, 'axis')
        size = shape[axis - 1]
        n = len(layer.top)
        points = list(p.slice_point)
        if not points:
            if size % n:
                raise _LayerError('%d cannot be sliced into %d equal parts'
                                  % (size, n))
            points = [size // n * i for i in range(1, n)]
        bounds = [0] + points + [size]
        if len(points) != n - 1 or any(a >= b for a, b in
                                       zip(bounds, bounds[1:])):
            raise _LayerError('slice points %s do not cut %d into %d parts'
                              % (points, size, n))
        out = []
        for a, b in zip(bounds, bounds[1:]):
            part = list(shape)
            part[axis - 1] = b - a
            out.append(tuple(part))
        return functools.partial(_run_slice, points=tuple(points),
                                 axis=axis), out

    def _eltwise(self, layer, shapes):
        p = layer.eltwise_param
        _same_shapes(shapes)
        operation = p.EltwiseOp.Name(p.operation)
        coeff = [finite(c, 'coeff') for c in p.coeff] or [1.0] * len(shapes)
        if operation != 'SUM' and p.coeff:
            raise _LayerError('coeff needs operation SUM')
        if len(coeff) != len(shapes):
            raise _LayerError('%d coeff for %d bottoms'
                              % (len(coeff), len(shapes)))
        return functools.partial(_run_eltwise, operation=operation,
                                 coeff=tuple(coeff)), [shapes[0]]

    def _flatten(self, layer, shape):
        p = layer.flatten_param
        ndim = len(shape) + 1
        start = _axis(p.axis, ndim, 'axis')
        end = _axis(p.end_axis, ndim, 'end_axis')
        if end < start:
            raise _LayerError('end_axis before axis')
        full = (None,) + tuple(shape)
        out = full[:start] + (math.prod(full[start:end + 1]),) + \
            full[end + 1:]
        return functools.partial(_run_flatten, start=start, end=end), \
            [out[1:]]

    # -- cuts ----------------------------------------------------------------

    def _position(self, cut, default):
        """Index into layer_order of the layer just after ``cut``."""
        if cut is None:
            return default
        if isinstance(cut, str):
            if cut not in self.layer_order:
                raise CaffeModelError('%s: no layer %r to cut at'
                                      % (self._source, cut))
            return self.layer_order.index(cut)
        k = int(cut)
        n = len(self.layer_names)
        k = k + n if k < 0 else k
        if not 0 <= k <= n:
            raise CaffeModelError('%s: cut %d is out of range 0..%d'
                                  % (self._source, cut, n))
        return len(self._nodes) if k == n else \
            self.layer_order.index(self.layer_names[k])

    def _describe(self, cut, p):
        if p == len(self._nodes):
            return 'cut %r (the end)' % (cut,)
        return 'cut %r (before layer %s)' % (cut, self.layer_order[p])

    def _crossing(self, p):
        """The values (ids, ascending) made before layer p and read at p
        or later."""
        if self._crossing_count[p] == 1:
            return [self._crossing_sum[p]]
        return [v for v in self._live
                if self._producer[v] < p <= self._last_read[v]]

    def cut_blobs(self, cut):
        """Names of the blobs crossing ``cut`` (exactly one when valid)."""
        p = self._position(cut, len(self._nodes))
        return [self._blobs[v] for v in self._crossing(p)]

    def cut_value(self, cut, default=None):
        """Internal id of the one blob version crossing ``cut``.

        Raises:
            CaffeModelError: naming the cut and the blobs crossing it,
                when that is not exactly one.
        """
        p = self._position(cut, len(self._nodes) if default is None
                           else default)
        crossing = self._crossing(p)
        if len(crossing) != 1:
            raise CaffeModelError(
                '%s: cannot cut the net at %s: %d blobs cross it (%s); a '
                'cut needs exactly one' % (
                    self._source, self._describe(cut, p), len(crossing),
                    ', '.join(self._blobs[v] for v in crossing)))
        return crossing[0]

    def layers_before(self, cut):
        """The layers ``forward(x, stop=cut)`` runs (``layer_order``
        prefix); the cut must be valid."""
        self.cut_value(cut)
        return self.layer_order[:self._position(cut, len(self._nodes))]

    def weighted_between(self, first, last):
        """The ``layer_names`` from layer ``first`` to layer ``last``
        (any names of ``layer_order``, both included), e.g. the weighted
        layers of ``conv_1-eltwise_stage2_block3`` in a ResNet."""
        for name in (first, last):
            if name not in self.layer_order:
                raise CaffeModelError('%s: no layer %r' % (self._source, name))
        a, b = self.layer_order.index(first), self.layer_order.index(last)
        return [n for n in self.layer_names
                if a <= self.layer_order.index(n) <= b]

    def valid_cuts(self):
        """The ints k (0..len(layer_names)) at which ``forward`` may stop
        and start: cuts before ``layer_names[k]`` that one blob crosses."""
        return [k for k in range(len(self.layer_names) + 1)
                if self._crossing_count[self._position(k, None)] == 1]

    def cut_shape(self, cut):
        """Shape per example of what ``forward(x, stop=cut)`` returns."""
        v = self.cut_value(cut)
        return (self.n_classes,) if v == self._output else self._shapes[v]

    def cut_source(self, cut):
        """(layer name, top index) that writes the blob crossing ``cut``;
        (None, 0) for the net's input."""
        v = self.cut_value(cut)
        producer = self._producer[v]
        if producer < 0:
            return None, 0
        return (self._nodes[producer].name,
                self._nodes[producer].tops.index(v))

    def feeds(self, weighted=False):
        """``{layer: tuple of the layers whose outputs it reads}``.

        Keys are ``layer_order``; the net's input is no layer. With
        ``weighted`` the keys are ``layer_names`` and the values the layers
        with weights reached backwards through parameter-free layers only
        (e.g. a ResNet block's first convolution is fed by the previous
        block's last Scale layers, through Eltwise and ReLU).
        """
        direct = {}
        for node in self._nodes:
            names = []
            for v in node.bottoms:
                p = self._producer[v]
                if p >= 0 and self._nodes[p].name not in names:
                    names.append(self._nodes[p].name)
            direct[node.name] = tuple(names)
        if not weighted:
            return direct
        weighted_names = set(self.layer_names)
        memo = {}

        def reach(name):
            if name not in memo:
                found = []
                for parent in direct[name]:
                    for w in ((parent,) if parent in weighted_names
                              else reach(parent)):
                        if w not in found:
                            found.append(w)
                memo[name] = tuple(found)
            return memo[name]
        return {name: reach(name) for name in self.layer_names}

    # -- running -------------------------------------------------------------

    def forward(self, x, start=None, stop=None):
        """Run the layers between the cuts ``start`` and ``stop``.

        ``forward(x)`` maps (N, C, H, W) images to (N, n_classes) logits;
        ``forward(x, stop=k)`` gives the one blob crossing cut k (e.g.
        (N, 512, 14, 14) after a ResNet stage) and ``forward(h, start=k)``
        continues from it. Cuts: see the class docstring.

        Returns:
            chainer.Variable (x itself, as a Variable, when no layer runs).

        Raises:
            CaffeModelError: a cut is not crossed by exactly one blob
                (the message names the cut and the blobs).
        """
        n = len(self._nodes)
        p0, p1 = self._position(start, 0), self._position(stop, n)
        first = self.cut_value(start, 0)
        last = self.cut_value(stop, n)
        if p1 < p0:
            raise CaffeModelError('%s: stop %r comes before start %r'
                                  % (self._source, stop, start))
        values = {first: x}
        folded = False
        for i in range(p0, p1):
            node = self._nodes[i]
            if folded:  # this Scale ran with the BatchNorm before it
                folded = False
            elif i + 1 < p1 and node.tops[0] != last and \
                    self._folds_with_next(i):
                nxt = self._nodes[i + 1]
                scale = self[nxt.name]
                mean, inv_std = self[node.name].stored_normalization(
                    scale.W.dtype)
                values[nxt.tops[0]] = scale.after_normalization(
                    values[node.bottoms[0]], mean, inv_std)
                folded = True
            else:
                outputs = node.run(self, [values[v] for v in node.bottoms])
                values.update(zip(node.tops, outputs))
            for v in self._free_after[i]:
                if v != last:
                    values.pop(v, None)
        y = chainer.as_variable(values[last])
        if last == self._output and y.ndim != 2:
            y = F.reshape(y, (y.shape[0], self.n_classes))
        return y

    def _folds_with_next(self, i):
        """Whether layer i is a BatchNorm normalizing with its stored
        statistics whose output only the next layer, a per-channel Scale,
        reads: the pair then runs as one affine pass (Caffe's BatchNorm +
        Scale, as OpenCV fuses them), the same values and gradients with
        one pass over the blob instead of two, forward and backward. Only
        with the CPU kernels: on a GPU, and under
        :func:`~finetune.models.cpu_kernels.chainer_functions` (the ONNX
        export: a BatchNormalization node per BatchNorm), each layer runs
        alone."""
        node = self._nodes[i]
        if node.type != 'BatchNorm' or i + 1 >= len(self._nodes):
            return False
        nxt = self._nodes[i + 1]
        return (use_cpu_kernels(self[node.name].mean) and
                nxt.type == 'Scale' and nxt.bottoms == node.tops and
                self._last_read.get(node.tops[0]) == i + 1 and
                nxt.name in self._children and
                self[nxt.name].per_channel and
                self[node.name].uses_stored_statistics)

    def stage(self, name, h):
        """Run from the cut before weighted layer ``name`` to the next one
        (one stage: a weighted layer and the parameter-free layers after
        it)."""
        k = self.layer_names.index(name)
        return self.forward(h, start=k, stop=k + 1)

    def definition(self):
        """The deploy prototxt text of this net (V2 layers, the new head
        size included)."""
        return text_format.MessageToString(self.net_param)

    @classmethod
    def from_prototxt(cls, path, n_classes=None, initialW=None):
        """Build from a deploy prototxt file."""
        return cls(read_prototxt_param(path), n_classes, path, initialW)

    @classmethod
    def from_text(cls, text, n_classes=None, source='prototxt',
                  initialW=None):
        """Build from deploy prototxt text."""
        return cls(parse_net_text(text, source), n_classes, source, initialW)


def _check_patches(channels, kernel, out):
    """Refuse a sliding window whose patches (what Chainer's CPU
    convolution and pooling gather: channels x kernel x output positions)
    would exceed the array bound."""
    check_array((channels,) + tuple(kernel) + tuple(out),
                'the %s window over %d channels: its patches'
                % (shape_text(kernel), channels))


def _need_image(shape):
    if len(shape) != 3:
        raise _LayerError('needs an (N, C, H, W) input, not %d-D'
                          % (len(shape) + 1))


def _channels(shape):
    return shape[0] if shape else 1


def _num_output(layer):
    return (layer.inner_product_param if layer.type == 'InnerProduct'
            else layer.convolution_param)


def _classifier(layers):
    """The last InnerProduct, else the last Convolution, else None."""
    for kind in ('InnerProduct', 'Convolution'):
        found = [l for l in layers if l.type == kind]
        if found:
            return found[-1]
    return None
