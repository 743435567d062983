"""Reading Caffe files: schema, caffemodel wire format, and error paths."""
import subprocess
import sys

import chainer
import numpy as np
import pytest

from tests.support.paths import data_path
from finetune.caffe import schema
from finetune.caffe import wire
from finetune.caffe.caffemodel import read_caffemodel
from finetune.caffe.caffemodel import read_prototxt
from finetune.caffe.caffemodel import read_prototxt_param
from finetune.caffe.importer import import_caffemodel
from finetune.caffe.writer import caffemodel_bytes
from finetune.caffe.writer import random_weights
from finetune.common.errors import CaffeModelError
from finetune.models import AlexNet
from finetune.models import CaffeGraph


def messages_by_name(fdp):
    found = {}

    def walk(prefix, messages):
        for m in messages:
            found[prefix + m.name] = m
            walk(prefix + m.name + '.', m.nested_type)
    walk('', fdp.message_type)
    return found


def test_schema_is_a_subset_of_caffe_proto():
    """Every field of caffe_min.proto has Caffe's number, type and label."""
    ours = messages_by_name(schema.load_file_descriptor())
    caffe = messages_by_name(schema.load_file_descriptor(
        data_path('caffe', 'caffe.proto')))
    checked = 0
    for name, message in ours.items():
        reference = {f.name: f for f in caffe[name].field}
        for field in message.field:
            ref = reference[field.name]
            assert (field.number, field.type, field.label, field.type_name,
                    field.default_value) == (
                ref.number, ref.type, ref.label, ref.type_name,
                ref.default_value), (name, field.name)
            assert field.options.packed == ref.options.packed
            checked += 1
    assert checked > 100


def test_prototxt_protobuf_round_trip_with_packed_floats():
    blob = schema.BlobProto(data=[1.5, -2.0])
    blob.shape.dim.extend([2])
    data = blob.SerializeToString()
    assert data[:2] == bytes([5 << 3 | 2, 8])  # packed, as Caffe writes
    assert schema.BlobProto.FromString(data).data == [1.5, -2.0]


def test_real_lenet_caffemodel_layers(lenet_files):
    net = read_caffemodel(lenet_files['caffemodel'])
    assert net.name == 'LeNet'
    shapes = {l.name: [b.shape for b in l.blobs] for l in net.layers}
    assert shapes['conv1'] == [(20, 1, 5, 5), (20,)]
    assert shapes['ip1'] == [(500, 800), (500,)]
    assert net.layer('loss').type == 'SoftmaxWithLoss'
    assert net.layer('conv1').blobs[0].dtype == np.float32


def test_v1_and_v2_files_hold_the_same_arrays(alexnet_caffemodels):
    v1 = read_caffemodel(alexnet_caffemodels['v1'])
    v2 = read_caffemodel(alexnet_caffemodels['v2'])
    assert v1.layer('fc6').type == v2.layer('fc6').type == 'InnerProduct'
    assert v1.layer('fc6').blobs[0].shape == (1, 1, 4096, 9216)  # legacy
    assert v2.layer('fc6').blobs[0].shape == (4096, 9216)
    assert v1.layer('conv2').param.convolution_param.group == 2
    for name, arrays in alexnet_caffemodels['weights'].items():
        for stored, original in zip(v1.layer(name).blobs, arrays):
            assert np.array_equal(stored.reshape(original.shape), original)


def blob_layer_bytes(blob_fields):
    """A V2 net with one InnerProduct layer whose blob is hand-encoded."""
    layer = schema.LayerParameter(name='ip', type='InnerProduct')
    layer.inner_product_param.num_output = 2
    layer_bytes = layer.SerializeToString() + wire.len_field(7, blob_fields)
    return wire.len_field(100, layer_bytes)


def test_unpacked_and_double_blobs_are_read(tmp_path):
    values = np.array([[1, 2, 3], [4, 5, 6]], np.float32)
    shape = schema.BlobProto()
    shape.shape.dim.extend([2, 3])
    unpacked = b''.join(wire.encode_varint(5 << 3 | 5) + v.tobytes()
                        for v in values.ravel())
    doubles = wire.len_field(8, values.astype('<f8').tobytes())
    for fields in (unpacked, doubles):
        path = tmp_path / 'blob.caffemodel'
        path.write_bytes(blob_layer_bytes(shape.SerializeToString() + fields))
        blob = read_caffemodel(str(path)).layer('ip').blobs[0]
        assert blob.dtype == np.float32
        assert np.array_equal(blob, values)


def test_prototxt_ignores_fields_outside_the_schema(alexnet_deploy):
    net = read_prototxt(alexnet_deploy)
    assert net.inputs == {'data': (10, 3, 227, 227)}
    conv2 = net.layer('conv2').param.convolution_param
    assert (conv2.num_output, conv2.group, list(conv2.pad)) == (256, 2, [2])
    assert net.layer('norm1').param.lrn_param.alpha == pytest.approx(1e-4)


@pytest.mark.parametrize('content, message', [
    (b'', 'file is empty'),
    (b'name: "LeNet"\nlayer {\n', 'looks like text'),
    (b'\xff\xd8\xff\xe0\x00\x10JFIF', 'not a caffemodel'),
    (b'\x0a\x05LeNet', 'no layers found'),
])
def test_files_that_are_not_caffemodels(tmp_path, content, message):
    path = tmp_path / 'bad.caffemodel'
    path.write_bytes(content)
    with pytest.raises(CaffeModelError) as e:
        read_caffemodel(str(path))
    assert message in str(e.value)
    assert str(path) in str(e.value)
    assert '\n' not in str(e.value)


def test_truncated_caffemodel(tmp_path, lenet_files):
    data = open(lenet_files['caffemodel'], 'rb').read()
    path = tmp_path / 'cut.caffemodel'
    path.write_bytes(data[:len(data) // 2])
    with pytest.raises(CaffeModelError, match='truncated'):
        read_caffemodel(str(path))


def test_missing_file():
    with pytest.raises(CaffeModelError, match='cannot open'):
        read_caffemodel('/nonexistent/x.caffemodel')


def lenet_model(lenet_files):
    return CaffeGraph.from_prototxt(lenet_files['prototxt'])


def test_missing_layer_is_an_error_and_nothing_is_loaded(lenet_files,
                                                         tmp_path):
    net = read_prototxt_param(lenet_files['prototxt'])
    weights = random_weights(lenet_model(lenet_files),
                             np.random.RandomState(0))
    del weights['ip2']
    path = tmp_path / 'partial.caffemodel'
    path.write_bytes(caffemodel_bytes(net, weights))
    model = lenet_model(lenet_files)
    before = model.conv1.W.array.copy()
    with pytest.raises(CaffeModelError, match='missing from the caffemodel: '
                                              'ip2'):
        import_caffemodel(model, str(path))
    assert np.array_equal(model.conv1.W.array, before)  # no partial load


def test_shape_mismatch_names_layer_and_shapes(lenet_files):
    model = CaffeGraph.from_prototxt(lenet_files['prototxt'], n_classes=3)
    with pytest.raises(CaffeModelError) as e:
        import_caffemodel(model, lenet_files['caffemodel'])
    text = str(e.value)
    assert 'layer ip2' in text and '(3, 500)' in text and '(10, 500)' in text


def test_unsupported_weighted_layers_are_all_listed(tmp_path, lenet_files):
    net = read_prototxt_param(lenet_files['prototxt'])
    for name in ('bn1', 'scale1'):
        layer = net.layer.add(name=name, type='BatchNorm' if name == 'bn1'
                              else 'Scale')
        layer.bottom.append('ip2')
        layer.top.append('ip2')
    weights = random_weights(lenet_model(lenet_files),
                             np.random.RandomState(0))
    weights['bn1'] = [np.zeros(10, np.float32)]
    weights['scale1'] = [np.ones(10, np.float32)]
    path = tmp_path / 'bn.caffemodel'
    path.write_bytes(caffemodel_bytes(net, weights))
    with pytest.raises(CaffeModelError) as e:
        import_caffemodel(lenet_model(lenet_files), str(path))
    assert 'bn1 (BatchNorm), scale1 (Scale)' in str(e.value)


def test_weights_without_a_model_layer_are_an_error(lenet_files):
    net = read_prototxt_param(lenet_files['prototxt'])
    del net.layer[-2:]  # ip2 and the softmax: the model stops at ip1
    model = CaffeGraph(net)
    assert model.layer_names == ('conv1', 'conv2', 'ip1')
    with pytest.raises(CaffeModelError,
                       match='no layer for the weights of: ip2'):
        import_caffemodel(model, lenet_files['caffemodel'])
    alexnet = AlexNet(initialW=chainer.initializers.Zero())
    with pytest.raises(CaffeModelError, match='missing from the caffemodel: '
                                              'conv3, conv4, conv5'):
        import_caffemodel(alexnet, lenet_files['caffemodel'])


def test_prototxt_with_unsupported_layers_lists_them(tmp_path):
    path = tmp_path / 'bad.prototxt'
    path.write_text('''
input: "data" input_shape { dim: 1 dim: 3 dim: 8 dim: 8 }
layer { name: "up" type: "Deconvolution" bottom: "data" top: "up" }
layer { name: "cut" type: "Crop" bottom: "up" bottom: "data" top: "cut" }
layer { name: "fc" type: "InnerProduct" bottom: "cut" top: "fc"
        inner_product_param { num_output: 2 } }''')
    with pytest.raises(CaffeModelError) as e:
        CaffeGraph.from_prototxt(str(path))
    assert 'up (Deconvolution), cut (Crop)' in str(e.value)
    path.write_text('layer { name: "x" type: ')
    with pytest.raises(CaffeModelError, match='cannot read prototxt'):
        CaffeGraph.from_prototxt(str(path))


def test_convert_cli_prints_one_line_error_for_a_bad_file(tmp_path):
    bad = tmp_path / 'bad.caffemodel'
    bad.write_bytes(b'\x00\x01garbage')
    result = subprocess.run(
        [sys.executable, '-m', 'finetune.convert', str(bad)],
        capture_output=True, text=True)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith('error: ')
    assert str(bad) in lines[0]
