"""Caffe files of DAG nets: V1 upgrade, writing BatchNorm/Scale/PReLU
blobs, and the importer's checks for the new weighted layers."""
import chainer
import cv2
import numpy as np
import pytest

from tests.support.paths import data_path
from finetune.caffe.caffemodel import parse_net_text
from finetune.caffe.caffemodel import read_caffemodel
from finetune.caffe.caffemodel import read_prototxt_param
from finetune.caffe.caffemodel import upgrade_v1_net
from finetune.caffe.importer import import_caffemodel
from finetune.caffe.writer import caffemodel_bytes
from finetune.caffe.writer import write_caffemodel
from finetune.weights.random_model import write_random_caffemodel
from finetune.common.errors import CaffeModelError
from finetune.models import CaffeGraph


def test_v1_net_upgrade_keeps_wiring_and_params():
    net = read_prototxt_param(data_path('caffe', 'v1_dag.prototxt'))
    assert len(net.layers) == 17 and not net.layer
    up = upgrade_v1_net(net)
    assert not up.layers and len(up.layer) == 17
    by_name = {l.name: l for l in up.layer}
    assert by_name['split1'].type == 'Split'
    assert list(by_name['split1'].top) == ['c1a', 'c1b']
    assert by_name['slice1'].type == 'Slice'
    assert list(by_name['slice1'].slice_param.slice_point) == [4]
    assert by_name['sum'].eltwise_param.coeff == [1.5, -0.5]
    assert by_name['prod'].eltwise_param.operation == 0  # PROD
    assert by_name['cat'].concat_param.concat_dim == 1
    assert by_name['flat'].type == 'Flatten'
    assert by_name['norm'].lrn_param.local_size == 3
    assert list(up.input_dim) == [1, 3, 16, 16]
    # definition() of a V1 net is V2 text
    text = CaffeGraph(net).definition()
    assert 'layers {' not in text and 'type: "Eltwise"' in text


def test_batchnorm_scale_prelu_blobs_round_trip(small_nets):
    files = small_nets['mixed_small']
    net = read_caffemodel(files['caffemodel'])
    assert [b.shape for b in net.layer('prelu1').blobs] == [(12,)]
    assert [b.shape for b in net.layer('prelu2').blobs] == [(1,)]
    files = small_nets['resnet_small']
    net = read_caffemodel(files['caffemodel'])
    bn = net.layer('bn2a_branch2a')
    assert [b.shape for b in bn.blobs] == [(8,), (8,), (1,)]
    assert [b.shape for b in net.layer('scale2a_branch2a').blobs] == \
        [(8,), (8,)]
    assert net.layer('res2a_branch1').blobs[0].shape == (16, 8, 1, 1)
    assert len(net.layer('res2a_branch1').blobs) == 1  # bias_term: false
    factor = bn.blobs[2][0]
    assert factor > 1 and (bn.blobs[1] / factor).min() >= 0.5


def test_v1_caffemodel_of_batchnorm_is_refused(small_nets, tmp_path):
    net = read_prototxt_param(small_nets['resnet_small']['prototxt'])
    with pytest.raises(CaffeModelError, match='bn_conv1: BatchNorm layers '
                                              'have no V1 type'):
        caffemodel_bytes(net, small_nets['resnet_small']['weights'], v1=True)


BN_ONLY = '''
input: "data" input_shape { dim: 1 dim: 2 dim: 3 dim: 3 }
layer { name: "bn" type: "BatchNorm" bottom: "data" top: "bn"
        batch_norm_param { eps: 0.5 } }
layer { name: "fc" type: "InnerProduct" bottom: "bn" top: "fc"
        inner_product_param { num_output: 2 } }
layer { name: "prob" type: "Softmax" bottom: "fc" top: "prob" }
'''


def test_batchnorm_factor_zero_means_zero_statistics(tmp_path):
    """Caffe (and OpenCV): a scale factor of 0 makes mean and variance 0,
    whatever the sums hold."""
    prototxt = tmp_path / 'bn.prototxt'
    prototxt.write_text(BN_ONLY)
    net = parse_net_text(BN_ONLY)
    weights = {'bn': [np.array([3, -2], 'f'), np.array([5, 7], 'f'),
                      np.zeros(1, 'f')],
               'fc': [np.ones((2, 18), 'f'), np.zeros(2, 'f')]}
    caffemodel = str(tmp_path / 'bn.caffemodel')
    write_caffemodel(caffemodel, net, weights)
    model = CaffeGraph.from_prototxt(str(prototxt))
    import_caffemodel(model, caffemodel)
    assert np.array_equal(model['bn'].mean, [0, 0])
    assert np.array_equal(model['bn'].var, [0, 0])
    x = np.random.RandomState(0).normal(0, 1, (2, 2, 3, 3)).astype('f')
    reference = cv2.dnn.readNetFromCaffe(str(prototxt), caffemodel)
    reference.setInput(x)
    ref = reference.forward('fc')
    with chainer.using_config('train', False):
        ours = model(x).array
    assert np.abs(ours - ref).max() / np.abs(ref).max() < 1e-5


def test_importer_checks_new_weighted_layers(small_nets, tmp_path):
    files = small_nets['resnet_small']
    net = read_prototxt_param(files['prototxt'])
    weights = dict(files['weights'])
    weights['bn_conv1'] = weights['bn_conv1'][:2]
    path = str(tmp_path / 'two_blobs.caffemodel')
    write_caffemodel(path, net, weights)
    model = CaffeGraph.from_prototxt(files['prototxt'])
    with pytest.raises(CaffeModelError, match='bn_conv1: has 2 weight blobs, '
                                              'the model expects 3'):
        import_caffemodel(model, path)
    weights = dict(files['weights'])
    weights['scale_conv1'] = [np.ones(9, 'f'), np.zeros(9, 'f')]
    write_caffemodel(path, net, weights)
    with pytest.raises(CaffeModelError, match=r'scale_conv1 blob 0: shape '
                                              r'mismatch.*\(8,\).*\(9,\)'):
        import_caffemodel(model, path)


def test_unsupported_weighted_layers_of_a_caffemodel(small_nets, tmp_path):
    files = small_nets['squeeze_small']
    net = read_prototxt_param(files['prototxt'])
    weights = dict(files['weights'])
    for name, kind in (('up', 'Deconvolution'), ('embed', 'Embed')):
        layer = net.layer.add(name=name, type=kind)
        layer.bottom.append('pool10')
        layer.top.append(name)
        weights[name] = [np.ones(3, 'f')]
    path = str(tmp_path / 'more.caffemodel')
    write_caffemodel(path, net, weights)
    model = CaffeGraph.from_prototxt(files['prototxt'])
    with pytest.raises(CaffeModelError) as e:
        import_caffemodel(model, path)
    assert 'unsupported weighted layer types: up (Deconvolution), embed ' \
        '(Embed)' in str(e.value)


def test_random_caffemodel_helper_v1(tmp_path):
    path = str(tmp_path / 'inception_v1.caffemodel')
    weights = write_random_caffemodel(
        data_path('caffe', 'inception_small.prototxt'), path, seed=3, v1=True)
    net = read_caffemodel(path)
    conv = net.layer('inception_3a/5x5')
    assert conv.param.DESCRIPTOR.name == 'V1LayerParameter'
    assert conv.blobs[0].shape == (6, 4, 5, 5)  # stored 4-D, as V1 does
    assert np.array_equal(conv.blobs[0], weights['inception_3a/5x5'][0])
