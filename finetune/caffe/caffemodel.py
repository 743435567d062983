"""Read Caffe network definitions (prototxt) and weights (caffemodel).

Both V2 (``layer``, ``BlobShape``) and legacy V1 (``layers``, 4-D
``num/channels/height/width`` blobs) files are read into the same
:class:`NetDefinition` of :class:`CaffeLayer` records with V2 type names.
"""
import dataclasses
import math
import mmap
import os
import re
from typing import List

import numpy as np
from google.protobuf import text_format
from google.protobuf.message import DecodeError

from finetune.caffe import schema
from finetune.caffe import wire
from finetune.common.errors import CaffeModelError

# V1 enum name -> V2 type string (Caffe's UpgradeV1LayerType).
V1_TYPE_NAMES = {
    'NONE': '', 'ABSVAL': 'AbsVal', 'ACCURACY': 'Accuracy',
    'ARGMAX': 'ArgMax', 'BNLL': 'BNLL', 'CONCAT': 'Concat',
    'CONTRASTIVE_LOSS': 'ContrastiveLoss', 'CONVOLUTION': 'Convolution',
    'DATA': 'Data', 'DECONVOLUTION': 'Deconvolution', 'DROPOUT': 'Dropout',
    'DUMMY_DATA': 'DummyData', 'EUCLIDEAN_LOSS': 'EuclideanLoss',
    'ELTWISE': 'Eltwise', 'EXP': 'Exp', 'FLATTEN': 'Flatten',
    'HDF5_DATA': 'HDF5Data', 'HDF5_OUTPUT': 'HDF5Output',
    'HINGE_LOSS': 'HingeLoss', 'IM2COL': 'Im2col',
    'IMAGE_DATA': 'ImageData', 'INFOGAIN_LOSS': 'InfogainLoss',
    'INNER_PRODUCT': 'InnerProduct', 'LRN': 'LRN',
    'MEMORY_DATA': 'MemoryData',
    'MULTINOMIAL_LOGISTIC_LOSS': 'MultinomialLogisticLoss', 'MVN': 'MVN',
    'POOLING': 'Pooling', 'POWER': 'Power', 'RELU': 'ReLU',
    'SIGMOID': 'Sigmoid', 'SIGMOID_CROSS_ENTROPY_LOSS':
    'SigmoidCrossEntropyLoss', 'SILENCE': 'Silence', 'SOFTMAX': 'Softmax',
    'SOFTMAX_LOSS': 'SoftmaxWithLoss', 'SPLIT': 'Split', 'SLICE': 'Slice',
    'TANH': 'TanH', 'WINDOW_DATA': 'WindowData', 'THRESHOLD': 'Threshold',
}

#: Largest prototxt read, in characters. Published deploy definitions are
#: under 1 MB (ResNet-152's is 230 kB); protobuf's text parser reads some
#: 100 kB/s here, so a larger text is refused before parsing.
MAX_PROTOTXT_BYTES = 4 * 2 ** 20
#: Most layers a caffemodel may hold (DenseNet-264, among the deepest
#: published Caffe nets, has about 1,300 in its training definition).
MAX_LAYERS = 20000
#: Most weight blobs a caffemodel may hold in all (a few per layer).
MAX_BLOBS = 100000

# Wire field numbers (caffe.proto), shared with writer.py.
_NET_LAYER, _NET_LAYERS_V1 = 100, 2
_LAYER_BLOBS, _LAYER_BLOBS_V1 = 7, 6
_BLOB_NUM, _BLOB_CHANNELS, _BLOB_HEIGHT, _BLOB_WIDTH = 1, 2, 3, 4
_BLOB_DATA, _BLOB_DOUBLE_DATA, _BLOB_SHAPE, _SHAPE_DIM = 5, 8, 7, 1


@dataclasses.dataclass
class CaffeLayer:
    """One layer of a Caffe net.

    Attributes:
        name (str): layer name, the key weights are matched by.
        type (str): V2 type name (``'Convolution'``, ``'InnerProduct'``...).
        bottom, top (list of str): input and output blob names.
        param: the layer's protobuf message (``LayerParameter`` or
            ``V1LayerParameter``); read ``param.convolution_param`` etc.
        blobs (list of numpy.ndarray): float32 weights in Caffe's shapes
            (legacy 4-D shapes as stored); empty for a prototxt.
    """
    name: str
    type: str
    bottom: List[str]
    top: List[str]
    param: object
    blobs: List[np.ndarray] = dataclasses.field(default_factory=list)


@dataclasses.dataclass
class NetDefinition:
    """A parsed net: its name, declared inputs (name -> shape) and layers."""
    name: str
    inputs: dict
    layers: List[CaffeLayer]

    def layer(self, name):
        """Return the layer called ``name`` or ``None``."""
        for layer in self.layers:
            if layer.name == name:
                return layer
        return None


_CONTROL = re.compile('[\x00-\x1f\x7f]')


def check_names(net):
    """Refuse layer names, types and blob names holding control characters
    (a newline would split the one-line errors that name them).

    Raises:
        ValueError: naming the layer with the characters escaped.
    """
    for layer in list(net.layer) + list(net.layers):
        texts = [layer.name, layer.type] + list(layer.bottom) + \
            list(layer.top)
        # strings that are not UTF-8 come back from protobuf as bytes
        texts = [t.decode('utf-8', 'replace') if isinstance(t, bytes) else t
                 for t in texts if not isinstance(t, int)]  # V1 types: enums
        if any(_CONTROL.search(t) for t in texts):
            raise ValueError('layer %s: its name, type or blob names hold '
                             'control characters' % ascii(layer.name))


def _layer_record(message, v1, blobs=()):
    if v1:
        type_name = v1_type_name(message.type)
    else:
        type_name = message.type
    return CaffeLayer(message.name, type_name, list(message.bottom),
                      list(message.top), message, list(blobs))


def _declared_inputs(net):
    """Deploy inputs from ``input``/``input_shape``/``input_dim``/Input."""
    inputs = {}
    for i, name in enumerate(net.input):
        if i < len(net.input_shape):
            inputs[name] = tuple(net.input_shape[i].dim)
        else:
            inputs[name] = tuple(net.input_dim[4 * i:4 * i + 4])
    for layer in net.layer:
        if layer.type == 'Input':
            shapes = layer.input_param.shape
            for i, top in enumerate(layer.top):
                shape = shapes[min(i, len(shapes) - 1)] if shapes else None
                inputs[top] = tuple(shape.dim) if shape else None
    return inputs


def parse_net_text(text, source='prototxt'):
    """Parse prototxt text (V1 or V2) into a ``caffe.NetParameter``.

    Fields outside finetune's schema (solver-only or data-layer options)
    are ignored; a syntax error raises :class:`CaffeModelError` naming
    ``source``.
    """
    if len(text) > MAX_PROTOTXT_BYTES:
        raise CaffeModelError('%s: cannot read prototxt: %d characters; the '
                              'limit is %d' % (source, len(text),
                                               MAX_PROTOTXT_BYTES))
    net = schema.NetParameter()
    try:
        text_format.Parse(text, net, allow_unknown_field=True)
    except text_format.ParseError as e:
        where = _layer_near(text, e.GetLine() if hasattr(e, 'GetLine')
                            else None)
        raise CaffeModelError('%s: cannot read prototxt%s: %s'
                              % (source, where,
                                 str(e).splitlines()[0])) from None
    except RecursionError:
        raise CaffeModelError('%s: cannot read prototxt: messages nested too '
                              'deeply' % source) from None
    try:
        check_names(net)
    except ValueError as e:
        raise CaffeModelError('%s: %s' % (source, e)) from None
    return net


_LAYER_START = re.compile(r'\blayers?\s*\{')
_NAME = re.compile(r'\bname\s*:\s*"([^"\n]*)"')


def _layer_near(text, line):
    """``' (layer NAME)'`` for the layer a parse error at ``line`` (1-based)
    is in, as far as a quick look at the text tells; else ``''``."""
    if not line:
        return ''
    head = ''.join(text.splitlines(True)[:line])
    starts = [m.end() for m in _LAYER_START.finditer(head)]
    if not starts:
        return ''
    name = _NAME.search(text, starts[-1])
    return ' (layer %s)' % name.group(1) if name else ''


def read_prototxt_param(path):
    """Read a prototxt file into a ``caffe.NetParameter``."""
    try:
        with open(path) as f:
            text = f.read(MAX_PROTOTXT_BYTES + 1)
    except (OSError, UnicodeDecodeError) as e:
        raise CaffeModelError('%s: cannot read prototxt: %s'
                              % (path, e)) from None
    return parse_net_text(text, path)


def read_prototxt(path):
    """Read a text network definition (V1 or V2) into a :class:`NetDefinition`."""
    return prototxt_net(read_prototxt_param(path))


def v1_type_name(enum_value):
    """The V2 type string of a ``V1LayerParameter.LayerType`` value."""
    name = schema.V1LayerParameter.LayerType.Name(enum_value)
    return V1_TYPE_NAMES.get(name, name)


def upgrade_v1_net(net):
    """A V2 copy of ``net``: V1 ``layers`` become ``layer`` entries.

    Like Caffe's UpgradeV1Net for the fields finetune reads: the name,
    wiring, V2 type name and every ``*_param`` message both layer kinds
    have; V2 layers come first, as :func:`prototxt_net` lists them. A net
    without V1 layers is returned as an unchanged copy.
    """
    upgraded = schema.NetParameter()
    upgraded.CopyFrom(net)
    del upgraded.layers[:]
    v2_fields = schema.LayerParameter.DESCRIPTOR.fields_by_name
    for old in net.layers:
        new = upgraded.layer.add(name=old.name, type=v1_type_name(old.type))
        new.bottom.extend(old.bottom)
        new.top.extend(old.top)
        for field, value in old.ListFields():
            if field.name.endswith('_param') and field.name in v2_fields:
                getattr(new, field.name).CopyFrom(value)
    return upgraded


def prototxt_net(net):
    """Turn a ``NetParameter`` message into a :class:`NetDefinition`."""
    layers = [_layer_record(m, v1=False) for m in net.layer]
    layers += [_layer_record(m, v1=True) for m in net.layers]
    return NetDefinition(net.name, _declared_inputs(net), layers)


def _blob_array(buf, begin, end):
    """Decode one ``BlobProto`` into a float32 array in its stored shape."""
    legacy = {}
    shape = None
    data, double_data = [], []
    for number, wire_type, value, (lo, _) in wire.iter_fields(buf, begin,
                                                              end):
        if number in (_BLOB_NUM, _BLOB_CHANNELS, _BLOB_HEIGHT, _BLOB_WIDTH) \
                and wire_type == wire.VARINT:
            legacy[number] = value
        elif number == _BLOB_SHAPE and wire_type == wire.LEN:
            shape = _shape_dims(buf, value)
        elif number == _BLOB_DATA and wire_type in (wire.LEN, wire.I32):
            wire.add_chunk(data, wire_type, value, 4, lo)
        elif number == _BLOB_DOUBLE_DATA and wire_type in (wire.LEN,
                                                           wire.I64):
            wire.add_chunk(double_data, wire_type, value, 8, lo)
    if shape is None:
        shape = [_signed(legacy.get(k, 0)) for k in (
            _BLOB_NUM, _BLOB_CHANNELS, _BLOB_HEIGHT, _BLOB_WIDTH)]
    if any(d < 0 for d in shape):
        raise wire.WireError('blob shape %s has a negative dimension'
                             % (tuple(shape),), begin)
    size = sum(count for _, count, _ in data or double_data)
    if math.prod(shape) != size:
        raise wire.WireError('blob holds %d values but its shape %s needs %d'
                             % (size, tuple(shape), math.prod(shape)), begin)
    if data:
        array = wire.repeated_numbers(buf, data, '<f4')
    else:
        array = wire.repeated_numbers(buf, double_data, '<f8')
        array = array.astype(np.float32)
    return array.reshape(tuple(shape))


def _signed(value):
    """A varint read as protobuf's int32/int64 (a negative one is 10 bytes)."""
    value &= 2 ** 64 - 1
    return value - 2 ** 64 if value >= 2 ** 63 else value


def _shape_dims(buf, span):
    """The int64 ``dim`` values of a ``BlobShape`` (packed or not)."""
    dims = []
    for number, wire_type, dim, _ in wire.iter_fields(buf, *span):
        if number != _SHAPE_DIM:
            continue
        values = wire.packed_varints(buf, *dim) if wire_type == wire.LEN \
            else [dim] if wire_type == wire.VARINT else []
        dims += [_signed(v) for v in values]
        if len(dims) > 32:
            raise wire.WireError('blob shape has more than 32 axes', span[0])
    return dims


def _parse_layer(buf, begin, end, v1, counts):
    """Split a layer's bytes into weights (arrays) and the rest (protobuf)."""
    blob_field = _LAYER_BLOBS_V1 if v1 else _LAYER_BLOBS
    rest = bytearray()
    blobs = []
    for number, wire_type, value, (lo, hi) in wire.iter_fields(buf, begin,
                                                                end):
        if number == blob_field and wire_type == wire.LEN:
            if len(blobs) + counts['blobs'] >= MAX_BLOBS:
                raise wire.WireError('more than %d weight blobs'
                                     % MAX_BLOBS, lo)
            blobs.append(_blob_array(buf, *value))
        else:
            rest += buf[lo:hi]
    message = (schema.V1LayerParameter if v1 else schema.LayerParameter)()
    message.ParseFromString(bytes(rest))
    container = schema.NetParameter()
    (container.layers if v1 else container.layer).append(message)
    check_names(container)
    counts['blobs'] += len(blobs)
    return _layer_record(message, v1, blobs)


def _looks_like_text(head):
    return bool(head) and all(32 <= b < 127 or b in b'\t\r\n' for b in head)


def read_caffemodel(path):
    """Read a binary caffemodel (V1 or V2) into a :class:`NetDefinition`.

    The file is memory-mapped and each weight blob is a read-only float32
    view of it (float64 ``double_data`` blobs are converted), so reading a
    233 MB AlexNet costs no more than the pages later touched.

    Raises:
        CaffeModelError: the file is missing, empty, truncated, not
            protobuf, or holds no layers; the message names the file and
            the byte offset where reading failed.
    """
    try:
        with open(path, 'rb') as f:
            size = os.fstat(f.fileno()).st_size
            if size == 0:
                raise CaffeModelError('%s: file is empty, not a caffemodel'
                                      % path)
            buf = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    except OSError as e:
        raise CaffeModelError('%s: cannot open caffemodel: %s'
                              % (path, e.strerror)) from None
    try:
        net = _parse_net(buf, size)
    except wire.Truncated as e:
        raise CaffeModelError('%s: truncated or corrupt caffemodel (%s; '
                              'file has %d bytes)' % (path, e, size)) from None
    except (wire.WireError, DecodeError, ValueError) as e:
        hint = (' (it looks like text: a prototxt?)'
                if _looks_like_text(buf[:64]) else '')
        raise CaffeModelError('%s: not a caffemodel: %s%s'
                              % (path, e, hint)) from None
    if not net.layers:
        raise CaffeModelError('%s: not a caffemodel: no layers found' % path)
    return net


def _parse_net(buf, size):
    name = ''
    layers = []
    counts = {'blobs': 0}
    for number, wire_type, value, (lo, _) in wire.iter_fields(buf, 0, size):
        if wire_type != wire.LEN:
            continue
        if number in (_NET_LAYER, _NET_LAYERS_V1):
            if len(layers) >= MAX_LAYERS:
                raise wire.WireError('more than %d layers' % MAX_LAYERS, lo)
            layers.append(_parse_layer(buf, *value,
                                       v1=number == _NET_LAYERS_V1,
                                       counts=counts))
        elif number == 1:
            name = bytes(buf[value[0]:value[1]]).decode('utf-8', 'replace')
    return NetDefinition(name, {}, layers)
