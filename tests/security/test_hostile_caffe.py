"""Generated hostile Caffe files, as property tests with a fixed seed.

Random bytes and mutated valid caffemodels (byte flips, truncations,
varint lengths blown up) go through the caffemodel reader and through
``python -m finetune.convert`` in-process; random values (0, negative,
huge, non-integer, non-finite) for the shape fields of every supported
layer type go through ``CaffeGraph.from_text``. Each ends in a valid
result or a one-line CaffeModelError (exit status 2 for the command),
never another exception, never a MemoryError.
"""
import contextlib
import io
import os

import numpy as np
import pytest
from hypothesis import HealthCheck
from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st

from finetune import convert
from finetune.caffe import wire
from finetune.caffe.caffemodel import parse_net_text
from finetune.caffe.caffemodel import read_caffemodel
from finetune.caffe.importer import Unset
from finetune.caffe.writer import caffemodel_bytes
from finetune.caffe.writer import random_weights
from finetune.common.errors import CaffeModelError
from finetune.models import CaffeGraph

SETTINGS = dict(derandomize=True, deadline=None, suppress_health_check=[
    HealthCheck.function_scoped_fixture, HealthCheck.too_slow])

TINY = '''name: "tiny"
input: "data" input_shape { dim: 1 dim: 2 dim: 6 dim: 6 }
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
        convolution_param { num_output: 4 kernel_size: 3 group: 2 } }
layer { name: "relu" type: "ReLU" bottom: "conv" top: "conv" }
layer { name: "pool" type: "Pooling" bottom: "conv" top: "pool"
        pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
layer { name: "fc" type: "InnerProduct" bottom: "pool" top: "fc"
        inner_product_param { num_output: 3 } }
layer { name: "prob" type: "Softmax" bottom: "fc" top: "prob" }
'''


@pytest.fixture(scope='module')
def tiny(tmp_path_factory):
    """The tiny net's prototxt and its V1 and V2 caffemodel bytes."""
    folder = tmp_path_factory.mktemp('tiny')
    prototxt = folder / 'tiny.prototxt'
    prototxt.write_text(TINY)
    net = parse_net_text(TINY)
    weights = random_weights(CaffeGraph(net), np.random.RandomState(0))
    return {'folder': folder, 'prototxt': str(prototxt),
            'v1': caffemodel_bytes(net, weights, v1=True),
            'v2': caffemodel_bytes(net, weights)}


def read_bytes(folder, data):
    """read_caffemodel on ``data``: the net, or the CaffeModelError's
    one-line message; any other exception fails the test."""
    path = str(folder / 'x.caffemodel')
    with open(path, 'wb') as f:
        f.write(data)
    try:
        return read_caffemodel(path)
    except CaffeModelError as e:
        message = str(e)
        assert '\n' not in message and message.startswith(path + ': ')
        return message


@settings(max_examples=300, **SETTINGS)
@given(data=st.binary(max_size=300))
def test_random_bytes_are_read_or_refused_in_one_line(tiny, data):
    read_bytes(tiny['folder'], data)


@st.composite
def mutations(draw, original):
    """``original`` with byte flips, a truncation or a varint blown up."""
    data = bytearray(original)
    kind = draw(st.sampled_from(['flip', 'truncate', 'varint']))
    if kind == 'truncate':
        return bytes(data[:draw(st.integers(0, len(data) - 1))])
    if kind == 'flip':
        for _ in range(draw(st.integers(1, 8))):
            position = draw(st.integers(0, len(data) - 1))
            data[position] = draw(st.integers(0, 255))
        return bytes(data)
    position = draw(st.integers(0, len(data) - 1))
    huge = draw(st.sampled_from([len(data), 2 ** 31, 2 ** 32 + 5, 2 ** 63,
                                 2 ** 64 - 1]))
    width = draw(st.integers(1, 3))  # the bytes of the varint replaced
    return bytes(data[:position] + wire.encode_varint(huge)
                 + data[position + width:])


@settings(max_examples=300, **SETTINGS)
@given(data=st.data(), version=st.sampled_from(['v1', 'v2']))
def test_mutated_caffemodels_are_read_or_refused(tiny, data, version):
    read_bytes(tiny['folder'], data.draw(mutations(tiny[version])))


def run_convert(*args):
    """``python -m finetune.convert ARGS`` in-process: (status, stderr)."""
    err = io.StringIO()
    with contextlib.redirect_stderr(err), \
            contextlib.redirect_stdout(io.StringIO()):
        try:
            status = convert.main(list(args))
        except SystemExit as e:
            status = e.code
    return status, err.getvalue()


@settings(max_examples=40, **SETTINGS)
@given(data=st.data(), version=st.sampled_from(['v1', 'v2']))
def test_convert_of_mutated_caffemodels_converts_or_says_why(tiny, data,
                                                            version):
    folder = tiny['folder']
    caffemodel = str(folder / 'mutated.caffemodel')
    with open(caffemodel, 'wb') as f:
        f.write(data.draw(mutations(tiny[version])))
    out = str(folder / 'mutated.npz')
    status, err = run_convert(caffemodel, '--prototxt', tiny['prototxt'],
                              '--out', out, '--force')
    if status == 0:
        assert err == '' and os.path.isfile(out)
    else:
        assert status == 2
        assert err.count('\n') == 1 and err.startswith('error: ')
    assert not [n for n in os.listdir(folder) if '.tmp' in n]


VALUES = ['0', '-1', '1', '2', '3', '7', '2147483647', '4294967295',
          '4294967296', '1099511627776', '1.5', '1e9', 'nan', '-inf', '"x"']

# type: (parameter message, its fields and defaults, extra layer text)
LAYERS = {
    'Convolution': ('convolution_param', {
        'num_output': '4', 'kernel_size': '3', 'stride': '1', 'pad': '1',
        'dilation': '1', 'group': '1', 'axis': '1'}, ''),
    'ConvolutionHW': ('convolution_param', {
        'num_output': '2', 'kernel_h': '3', 'kernel_w': '1',
        'stride_h': '1', 'stride_w': '2', 'pad_h': '0', 'pad_w': '1'}, ''),
    'Pooling': ('pooling_param', {
        'kernel_size': '2', 'stride': '2', 'pad': '1',
        'global_pooling': 'false'}, ''),
    'PoolingHW': ('pooling_param', {
        'kernel_h': '2', 'kernel_w': '3', 'stride_h': '1', 'stride_w': '2',
        'pad_h': '0', 'pad_w': '1'}, ''),
    'LRN': ('lrn_param', {'local_size': '5', 'alpha': '0.0001',
                          'beta': '0.75', 'k': '1'}, ''),
    'InnerProduct': ('inner_product_param', {'num_output': '5',
                                             'axis': '1'}, ''),
    'Dropout': ('dropout_param', {'dropout_ratio': '0.5'}, ''),
    'ReLU': ('relu_param', {'negative_slope': '0.1'}, ''),
    'Softmax': ('softmax_param', {'axis': '1'}, ''),
    'BatchNorm': ('batch_norm_param', {'eps': '0.00001',
                                       'moving_average_fraction': '0.999'},
                  ''),
    'Scale': ('scale_param', {'axis': '1', 'num_axes': '1'}, ''),
    'Concat': ('concat_param', {'axis': '1'}, 'bottom: "data" '),
    'Eltwise': ('eltwise_param', {'coeff': '1'}, 'bottom: "data" '),
    'Flatten': ('flatten_param', {'axis': '1', 'end_axis': '-1'}, ''),
    'PReLU': ('prelu_param', {'channel_shared': 'false'}, ''),
}


def hostile_net(kind, fields):
    """A net: 1x3x8x8 input, the layer ``hostile`` of ``kind`` with
    ``fields``, then an InnerProduct classifier."""
    message, _, extra = LAYERS[kind]
    kind = kind.replace('HW', '')
    body = ' '.join('%s: %s' % item for item in fields.items())
    if kind == 'Eltwise':
        body += ' coeff: 1'
    return ('input: "data" input_shape { dim: 1 dim: 3 dim: 8 dim: 8 }\n'
            'layer { name: "hostile" type: "%s" bottom: "data" %stop: '
            '"hostile" %s { %s } }\n'
            'layer { name: "fc" type: "InnerProduct" bottom: "hostile" '
            'top: "fc" inner_product_param { num_output: 2 } }\n'
            % (kind, extra, message, body))


@st.composite
def hostile_layers(draw):
    kind = draw(st.sampled_from(sorted(LAYERS)))
    fields = dict(LAYERS[kind][1])
    for name in draw(st.lists(st.sampled_from(sorted(fields)), min_size=1,
                              max_size=3, unique=True)):
        fields[name] = draw(st.sampled_from(VALUES))
    return hostile_net(kind, fields)


def build(text):
    """CaffeGraph.from_text: the model, or the one-line message."""
    try:
        return CaffeGraph.from_text(text, source='t.prototxt',
                                    initialW=Unset())
    except CaffeModelError as e:
        message = str(e)
        assert '\n' not in message and message.startswith('t.prototxt: ')
        return message


@settings(max_examples=400, **SETTINGS)
@given(text=hostile_layers())
def test_random_layer_values_build_or_name_the_layer(text):
    result = build(text)
    if isinstance(result, str):
        assert 'layer hostile' in result or '(layer hostile)' in result \
            or 'layer fc (InnerProduct)' in result, (text, result)
    else:
        assert result.layer_order[0] == 'hostile'


@settings(max_examples=150, **SETTINGS)
@given(dims=st.lists(st.sampled_from(VALUES), min_size=0, max_size=5))
def test_random_input_dims_build_or_name_the_input(dims):
    text = ('layer { name: "in" type: "Input" top: "data" input_param { '
            'shape { %s } } }\n' % ' '.join('dim: %s' % d for d in dims) +
            'layer { name: "fc" type: "InnerProduct" bottom: "data" '
            'top: "fc" inner_product_param { num_output: 2 } }\n')
    result = build(text)
    if isinstance(result, str):
        assert 'layer in' in result or 'one 4-D input' in result, result
    else:
        assert len(dims) == 4


@settings(max_examples=150, **SETTINGS)
@given(text=st.text(max_size=200))
def test_random_text_builds_or_is_refused_in_one_line(text):
    build(text)
