"""The imported Chains compute what Caffe computes, checked against OpenCV.

OpenCV's ``cv2.dnn.readNetFromCaffe`` is an independent implementation of
Caffe's layers; both sides read the same caffemodel files.
"""
import glob
import os

import chainer
import chainer.functions as F
import cv2
import numpy as np
import pytest

from tests.support.paths import data_path
from finetune.caffe.caffemodel import read_prototxt_param
from finetune.caffe.importer import import_caffemodel
from finetune.caffe.writer import random_weights
from finetune.caffe.writer import write_caffemodel
from finetune.models import AlexNet
from finetune.models import CaffeGraph
from finetune.models import CaffeNet
from finetune.models.functions import caffe_lrn
from finetune.data.resources import imagenet_mean
from finetune.data.transforms import CaffePreprocess


def chainer_outputs(model, x):
    with chainer.using_config('train', False), chainer.no_backprop_mode():
        logits = model(x).array
    return logits, F.softmax(logits).array


def opencv_outputs(prototxt, caffemodel, x, logits_blob, prob_blob='prob'):
    net = cv2.dnn.readNetFromCaffe(prototxt, caffemodel)
    net.setInput(x)
    logits, prob = net.forward([logits_blob, prob_blob])
    return logits.reshape(len(x), -1), prob.reshape(len(x), -1)


def relative_error(actual, reference):
    return np.abs(actual - reference).max() / np.abs(reference).max()


def alexnet_inputs():
    cat = CaffePreprocess(mean=imagenet_mean())(data_path('cat.jpg'))
    noise = np.random.RandomState(1).uniform(-120, 120, (2, 3, 227, 227))
    return np.concatenate([cat[np.newaxis], noise]).astype(np.float32)


@pytest.mark.parametrize('version', ['v2', 'v1'])
def test_alexnet_matches_opencv(version, alexnet_caffemodels, alexnet_deploy):
    model = AlexNet()
    import_caffemodel(model, alexnet_caffemodels[version])
    x = alexnet_inputs()
    logits, prob = chainer_outputs(model, x)
    ref_logits, ref_prob = opencv_outputs(
        alexnet_deploy, alexnet_caffemodels[version], x, 'fc8')
    assert np.abs(ref_logits).max() > 10  # random weights: large logits
    assert relative_error(logits, ref_logits) < 1e-5
    assert np.abs(prob - ref_prob).max() < 1e-4
    # the generic prototxt Chain computes the same
    graph = CaffeGraph.from_prototxt(alexnet_deploy)
    import_caffemodel(graph, alexnet_caffemodels[version])
    assert relative_error(chainer_outputs(graph, x)[0], ref_logits) < 1e-5


def test_alexnet_groups_and_lrn_matter(alexnet_caffemodels):
    """A wrong LRN alpha (Chainer's convention) breaks parity: the test
    above can fail."""
    model = AlexNet()
    import_caffemodel(model, alexnet_caffemodels['v2'])
    x = alexnet_inputs()[:1]
    exact, _ = chainer_outputs(model, x)
    h = F.relu(model.conv1(x))
    wrong = F.local_response_normalization(h, 5, 1, 1e-4, 0.75)
    right = F.local_response_normalization(h, 5, 1, 1e-4 / 5, 0.75)
    assert np.abs(wrong.array - right.array).max() > 1e-3
    assert model.conv2.W.shape == (256, 48, 5, 5)  # two groups
    assert np.isfinite(exact).all()


def caffenet_deploy(tmp_path):
    """BVLC CaffeNet deploy: the Flickr-Style net with its fc8 renamed."""
    text = open(data_path('caffe', 'flickr_style_deploy.prototxt')).read()
    path = tmp_path / 'caffenet_deploy.prototxt'
    path.write_text(text.replace('fc8_flickr', 'fc8'))
    return str(path)


def test_caffenet_matches_opencv(tmp_path):
    deploy = caffenet_deploy(tmp_path)
    model = CaffeNet(n_classes=20)
    weights = random_weights(model, np.random.RandomState(2))
    caffemodel = str(tmp_path / 'caffenet.caffemodel')
    write_caffemodel(caffemodel, read_prototxt_param(deploy), weights)
    import_caffemodel(model, caffemodel)
    x = alexnet_inputs()
    logits, prob = chainer_outputs(model, x)
    ref_logits, ref_prob = opencv_outputs(deploy, caffemodel, x, 'fc8')
    assert relative_error(logits, ref_logits) < 1e-5
    assert np.abs(prob - ref_prob).max() < 1e-4
    # AlexNet's order (norm before pool) gives a different answer
    alexnet = AlexNet(n_classes=20)
    import_caffemodel(alexnet, caffemodel)
    assert relative_error(chainer_outputs(alexnet, x)[0], ref_logits) > 1e-3


def lenet_digits(samples):
    paths = sorted(glob.glob(os.path.join(samples, '*.png')))
    labels = [int(os.path.basename(p).split('_')[1]) for p in paths]
    prep = CaffePreprocess(size=(28, 28), crop_size=None, mean=None,
                           scale=1 / 256, channels=1)
    return np.stack([prep(p) for p in paths]), labels


def test_real_lenet_classifies_mnist_and_matches_opencv(lenet_files):
    model = CaffeGraph.from_prototxt(lenet_files['prototxt'])
    loaded = import_caffemodel(model, lenet_files['caffemodel'])
    assert loaded == ['conv1', 'conv2', 'ip1', 'ip2']
    x, labels = lenet_digits(lenet_files['samples'])
    assert len(labels) == 10
    logits, prob = chainer_outputs(model, x)
    assert list(prob.argmax(axis=1)) == labels
    ref_logits, ref_prob = opencv_outputs(
        lenet_files['prototxt'], lenet_files['caffemodel'], x, 'ip2', 'loss')
    assert relative_error(logits, ref_logits) < 1e-5
    assert np.abs(prob - ref_prob).max() < 1e-4


ODD_LAYERS = '''
name: "odd"
input: "data"
input_shape { dim: 2 dim: 3 dim: 23 dim: 23 }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
  convolution_param { num_output: 8 kernel_h: 3 kernel_w: 5 pad_h: 1
                      pad_w: 2 stride: 2 } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1"
  relu_param { negative_slope: 0.1 } }
layer { name: "pool1" type: "Pooling" bottom: "conv1" top: "pool1"
  pooling_param { pool: MAX kernel_size: 3 stride: 2 pad: 1 } }
layer { name: "norm1" type: "LRN" bottom: "pool1" top: "norm1"
  lrn_param { local_size: 3 alpha: 0.5 beta: 0.75
              norm_region: WITHIN_CHANNEL } }
layer { name: "conv2" type: "Convolution" bottom: "norm1" top: "conv2"
  convolution_param { num_output: 6 kernel_size: 3 group: 2 pad: 1 } }
layer { name: "pool2" type: "Pooling" bottom: "conv2" top: "pool2"
  pooling_param { pool: AVE kernel_size: 3 stride: 2 pad: 1 } }
layer { name: "norm2" type: "LRN" bottom: "pool2" top: "norm2"
  lrn_param { local_size: 3 alpha: 0.3 beta: 0.5 } }
layer { name: "pool3" type: "Pooling" bottom: "norm2" top: "pool3"
  pooling_param { pool: AVE global_pooling: true } }
layer { name: "fc" type: "InnerProduct" bottom: "pool3" top: "fc"
  inner_product_param { num_output: 4 } }
layer { name: "prob" type: "Softmax" bottom: "fc" top: "prob" }
'''


def test_ceil_pooling_ave_pooling_and_lrn_regions_match_opencv(tmp_path):
    """Pad-clipped ceil MAX/AVE pooling, WITHIN_CHANNEL LRN, k, groups."""
    deploy = tmp_path / 'odd.prototxt'
    deploy.write_text(ODD_LAYERS)
    model = CaffeGraph.from_prototxt(str(deploy))
    weights = random_weights(model, np.random.RandomState(3))
    caffemodel = str(tmp_path / 'odd.caffemodel')
    write_caffemodel(caffemodel, read_prototxt_param(str(deploy)), weights)
    import_caffemodel(model, caffemodel)
    x = np.random.RandomState(4).normal(0, 3, (2, 3, 23, 23)).astype('f')
    logits, prob = chainer_outputs(model, x)
    ref_logits, ref_prob = opencv_outputs(str(deploy), caffemodel, x, 'fc')
    assert relative_error(logits, ref_logits) < 1e-5
    net = cv2.dnn.readNetFromCaffe(str(deploy), caffemodel)
    net.setInput(x)
    with chainer.using_config('train', False):
        pool1 = model.forward(x, stop='conv2').array
    assert pool1.shape == net.forward('norm1').shape  # ceil rounding
    assert np.abs(pool1 - net.forward('norm1')).max() < 1e-4


def test_lrn_k_follows_caffe_formula():
    """OpenCV's importer ignores LRN's k, so k is checked against Caffe's
    formula (lrn_layer.cpp): x / (k + alpha / n * sum of n squares) ** beta.
    """
    x = np.random.RandomState(5).normal(0, 2, (2, 6, 4, 4)).astype('f')
    squares = np.pad(x ** 2, ((0, 0), (1, 1), (0, 0), (0, 0)))
    window = sum(squares[:, i:i + 6] for i in range(3))
    expected = x / (2.0 + 0.3 / 3 * window) ** 0.5
    actual = caffe_lrn(x, local_size=3, alpha=0.3, beta=0.5, k=2.0).array
    assert np.abs(actual - expected).max() < 1e-5


def test_input_dim_deploy_and_v1_prototxt(tmp_path, lenet_files):
    """Legacy deploy inputs (input_dim) and V1 ``layers`` text parse."""
    text = '''
name: "v1net"
input: "data"
input_dim: 1 input_dim: 1 input_dim: 28 input_dim: 28
layers { name: "conv1" type: CONVOLUTION bottom: "data" top: "conv1"
  convolution_param { num_output: 20 kernel_size: 5 } }
layers { name: "pool1" type: POOLING bottom: "conv1" top: "pool1"
  pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
layers { name: "ip1" type: INNER_PRODUCT bottom: "pool1" top: "ip1"
  inner_product_param { num_output: 3 } }
layers { name: "prob" type: SOFTMAX bottom: "ip1" top: "prob" }
'''
    model = CaffeGraph.from_text(text)
    assert model.layer_names == ('conv1', 'ip1')
    assert model.net_input_shape == (1, 28, 28)
    assert model.ip1.W.shape == (3, 20 * 12 * 12)
    out = model(np.zeros((2, 1, 28, 28), np.float32))
    assert out.shape == (2, 3)
