"""A Chain built from any deploy prototxt of the supported Caffe layers.

Supported types: Input, Convolution, Pooling (MAX/AVE, ceil/floor, global),
LRN (ACROSS_CHANNELS/WITHIN_CHANNEL), InnerProduct, Dropout, ReLU, Softmax.
The net must be a chain (each layer reads the previous layer's output), as
classifiers like LeNet, AlexNet and CaffeNet are. Any other layer type is an
error that lists every such layer.
"""
import functools

import chainer
import chainer.functions as F
import chainer.links as L
import numpy as np
from google.protobuf import text_format

from finetune.caffe.caffemodel import parse_net_text
from finetune.caffe.caffemodel import prototxt_net
from finetune.caffe.caffemodel import read_prototxt_param
from finetune.common.errors import CaffeModelError
from finetune.models.alexnet import stage_slice
from finetune.models.functions import caffe_lrn
from finetune.models.functions import caffe_pooling_2d
from finetune.models.functions import pooled_size

SUPPORTED_TYPES = ('Input', 'Convolution', 'Pooling', 'LRN', 'InnerProduct',
                   'Dropout', 'ReLU', 'Softmax')
PARAM_TYPES = ('Convolution', 'InnerProduct')


def _pair(repeated, single_h, single_w, default):
    """Caffe's (h, w) from a repeated field or its ``_h``/``_w`` fields."""
    if single_h or single_w:
        return (single_h, single_w)
    values = list(repeated) or [default]
    return (values[0], values[-1])


def _conv_geometry(p):
    kernel = _pair(p.kernel_size, p.kernel_h, p.kernel_w, 1)
    stride = _pair(p.stride, p.stride_h, p.stride_w, 1)
    pad = _pair(p.pad, p.pad_h, p.pad_w, 0)
    dilation = _pair(p.dilation, 0, 0, 1)
    return kernel, stride, pad, dilation


def _pool_geometry(p, size):
    if p.global_pooling:
        return tuple(size), (1, 1), (0, 0)
    kernel = (p.kernel_h, p.kernel_w) if p.kernel_h else (p.kernel_size,) * 2
    stride = (p.stride_h, p.stride_w) if p.stride_h else (p.stride,) * 2
    pad = (p.pad_h, p.pad_w) if (p.pad_h or p.pad_w) else (p.pad,) * 2
    return kernel, stride, pad


def _input_shape(net, source):
    shapes = [s for s in net.inputs.values() if s]
    if len(net.inputs) != 1 or len(shapes) != 1 or len(shapes[0]) != 4:
        raise CaffeModelError(
            '%s: a deploy net needs exactly one 4-D input (N, C, H, W); '
            'found %s' % (source, net.inputs or 'none'))
    return shapes[0][1:]


class CaffeGraph(chainer.Chain):
    """A classifier Chain made from a Caffe deploy definition.

    ``forward(x)`` maps (N, C, H, W) input to the logits of the last
    parameter layer (a trailing Softmax is left to the caller, as in
    AlexNet); ``probabilities(x)`` applies it. Links are named after the
    Caffe layers, so :func:`finetune.caffe.import_caffemodel` matches them.

    Args:
        net_param: a ``caffe.NetParameter`` message (deploy definition).
        n_classes (int): if given, replaces the last InnerProduct's
            num_output (the new head of a fine-tuned net).
        source (str): file name used in error messages.
        initialW: Chainer initializer of the weights (Chainer's default
            when ``None``; ``chainer.initializers.Zero()`` skips drawing
            randoms when weights are about to be loaded).
    """

    arch = 'caffe'

    def __init__(self, net_param, n_classes=None, source='prototxt',
                 initialW=None):
        super().__init__()
        net_param = _copy(net_param)
        net = prototxt_net(net_param)
        unsupported = ['%s (%s)' % (l.name, l.type) for l in net.layers
                       if l.type not in SUPPORTED_TYPES]
        if unsupported:
            raise CaffeModelError('%s: unsupported Caffe layer types: %s'
                                  % (source, ', '.join(unsupported)))
        layers = [l for l in net.layers if l.type != 'Input']
        if n_classes is not None:
            last_ip = [l for l in layers if l.type == 'InnerProduct'][-1]
            last_ip.param.inner_product_param.num_output = n_classes
        self.net_param = net_param
        self.net_input_shape = _input_shape(net, source)
        self.insize = self.net_input_shape[1]
        self.stages = {}
        self.layer_names = []
        self._build(layers, net, source, initialW)
        self.n_classes = self._out_size

    def _build(self, layers, net, source, initialW):
        shape = _input_shape(net, source)
        blob = next(iter(net.inputs))
        ops = []
        for layer in layers:
            if list(layer.bottom) != [blob] or len(layer.top) != 1:
                raise CaffeModelError(
                    '%s: layer %s: only chain-shaped nets are supported '
                    '(it reads %s, the previous output is %s)'
                    % (source, layer.name, list(layer.bottom), blob))
            blob = layer.top[0]
            op, shape = self._make_op(layer, shape, initialW)
            if layer.type in PARAM_TYPES:
                self.layer_names.append(layer.name)
                ops = self.stages[layer.name] = []
            if layer.type == 'Softmax':
                continue  # logits out; softmax applied by the caller
            ops.append(op)
        self.layer_names = tuple(self.layer_names)
        self._out_size = int(np.prod(shape))

    def _make_op(self, layer, shape, initialW):
        """Return (function of h, output shape) for one layer."""
        kind = layer.type
        if kind == 'Convolution':
            p = layer.param.convolution_param
            kernel, stride, pad, dilation = _conv_geometry(p)
            with self.init_scope():
                setattr(self, layer.name, L.Convolution2D(
                    shape[0], p.num_output, kernel, stride, pad,
                    nobias=not p.bias_term, dilate=dilation, groups=p.group,
                    initialW=initialW))
            out = [(n + 2 * pd - dl * (k - 1) - 1) // s + 1 for n, k, s, pd, dl
                   in zip(shape[1:], kernel, stride, pad, dilation)]
            return self[layer.name], (p.num_output, *out)
        if kind == 'InnerProduct':
            p = layer.param.inner_product_param
            with self.init_scope():
                setattr(self, layer.name, L.Linear(
                    int(np.prod(shape)), p.num_output,
                    nobias=not p.bias_term, initialW=initialW))
            return self[layer.name], (p.num_output,)
        if kind == 'Pooling':
            p = layer.param.pooling_param
            kernel, stride, pad = _pool_geometry(p, shape[1:])
            ceil = p.round_mode == p.CEIL
            method = 'max' if p.pool == p.MAX else 'ave'
            if p.pool not in (p.MAX, p.AVE):
                raise CaffeModelError('layer %s: only MAX and AVE pooling '
                                      'are supported' % layer.name)
            out = [pooled_size(n, k, s, pd, ceil)
                   for n, k, s, pd in zip(shape[1:], kernel, stride, pad)]
            return functools.partial(
                caffe_pooling_2d, method=method, kernel=kernel, stride=stride,
                pad=pad, ceil=ceil), (shape[0], *out)
        if kind == 'LRN':
            p = layer.param.lrn_param
            region = p.NormRegion.Name(p.norm_region)
            return functools.partial(
                caffe_lrn, local_size=p.local_size, alpha=p.alpha,
                beta=p.beta, k=p.k, region=region), shape
        if kind == 'ReLU':
            slope = layer.param.relu_param.negative_slope
            if slope:
                return functools.partial(F.leaky_relu, slope=slope), shape
            return F.relu, shape
        if kind == 'Dropout':
            ratio = layer.param.dropout_param.dropout_ratio
            return functools.partial(F.dropout, ratio=ratio), shape
        return None, shape  # Softmax: shape unchanged

    def stage(self, name, h):
        """Run layer ``name`` and the parameter-free ops that follow it."""
        for op in self.stages[name]:
            h = op(h)
        return h

    def forward(self, x, start=None, stop=None):
        """Run the stages ``layer_names[start:stop]`` (default: all)."""
        for name in stage_slice(self.layer_names, start, stop):
            x = self.stage(name, x)
        return x

    def definition(self):
        """The deploy prototxt text of this net (new head size included)."""
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


def _copy(message):
    copy = type(message)()
    copy.CopyFrom(message)
    return copy
