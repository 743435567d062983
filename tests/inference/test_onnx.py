"""ONNX export: the exported graph computes what the Chainer model computes.

The files are run with onnx's pure-numpy ``ReferenceEvaluator``. Its LRN
kernel in onnx < 1.19 loops over the batch axis instead of the channels
(onnx/onnx#7805, fixed upstream by #8331), so the tests give it
:class:`LRN`, a transcription of the operator's specification; every other
operator is onnx's own.
"""
import json
import os
import subprocess
import sys

import chainer
import chainer.functions as F
import numpy as np
import pytest

onnx = pytest.importorskip('onnx')
pytest.importorskip('onnx_chainer')
from onnx.reference import ReferenceEvaluator  # NOQA: E402

from finetune.models.model_file import save_model  # NOQA: E402
from finetune.common.errors import FinetuneError  # NOQA: E402
from finetune.inference.onnx import export_onnx  # NOQA: E402
from finetune.inference.onnx import read_metadata  # NOQA: E402
from finetune.inference.onnx import to_onnx  # NOQA: E402
from finetune.models import AlexNet  # NOQA: E402
from finetune.models import CaffeGraph  # NOQA: E402
from finetune.models.functions import pooled_size  # NOQA: E402
from finetune.data.transforms import CaffePreprocess  # NOQA: E402
from tests.support.onnx_ops import LRN  # NOQA: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Grouped conv, LRN across channels with Caffe's alpha/k (not the
# defaults), MAX pooling 3/2 over 32x32 (ceil gives 16, floor 15: the -inf
# pad + slice path; the leaky ReLU before it leaves negative values, so a
# pad of 0 would change the result), WITHIN_CHANNEL LRN, padded AVE pooling
# (Caffe's clipped divisor).
TINY_PROTOTXT = '''
name: "tiny"
layer { name: "data" type: "Input" top: "data"
        input_param { shape { dim: 1 dim: 3 dim: 36 dim: 36 } } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
        convolution_param { num_output: 8 kernel_size: 5 } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1"
        relu_param { negative_slope: 0.1 } }
layer { name: "norm1" type: "LRN" bottom: "conv1" top: "norm1"
        lrn_param { local_size: 3 alpha: 0.5 beta: 0.75 k: 2 } }
layer { name: "pool1" type: "Pooling" bottom: "norm1" top: "pool1"
        pooling_param { pool: MAX kernel_size: 3 stride: 2 } }
layer { name: "conv2" type: "Convolution" bottom: "pool1" top: "conv2"
        convolution_param { num_output: 8 kernel_size: 3 pad: 1 group: 2 } }
layer { name: "relu2" type: "ReLU" bottom: "conv2" top: "conv2" }
layer { name: "norm2" type: "LRN" bottom: "conv2" top: "norm2"
        lrn_param { local_size: 3 alpha: 0.3 beta: 0.75
                    norm_region: WITHIN_CHANNEL } }
layer { name: "pool2" type: "Pooling" bottom: "norm2" top: "pool2"
        pooling_param { pool: AVE kernel_size: 3 stride: 2 pad: 1 } }
layer { name: "fc3" type: "InnerProduct" bottom: "pool2" top: "fc3"
        inner_product_param { num_output: 5 } }
layer { name: "prob" type: "Softmax" bottom: "fc3" top: "prob" }
'''
TINY_CLASSES = ['zero', 'one', 'two', 'three', 'four']


def run_onnx(model_or_path, x):
    """(logits, prob) of the ONNX graph on ``x``."""
    return ReferenceEvaluator(model_or_path, new_ops=[LRN]).run(
        None, {'data': x})


def chainer_logits(model, x):
    with chainer.using_config('train', False), \
            chainer.using_config('enable_backprop', False):
        return model(x).array


def assert_close(actual, expected, tol=1e-4):
    err = np.abs(actual - expected).max() / np.abs(expected).max()
    assert err < tol, 'relative error %g' % err


def random_input(batch, shape, seed=0):
    return (np.random.RandomState(seed).randn(batch, *shape) * 50).astype(
        np.float32)


def ops(onnx_model, op_type):
    return [n for n in onnx_model.graph.node if n.op_type == op_type]


def attrs(node):
    return {a.name: onnx.helper.get_attribute_value(a)
            for a in node.attribute}


@pytest.fixture(scope='module')
def tiny_model():
    np.random.seed(1)
    return CaffeGraph.from_text(TINY_PROTOTXT)


@pytest.fixture(scope='module')
def tiny_file(tmp_path_factory, tiny_model):
    path = str(tmp_path_factory.mktemp('tiny') / 'tiny.npz')
    preprocess = CaffePreprocess(size=(40, 40), crop_size=36,
                                 mean=(10.0, 20.5, 30.25), scale=0.125)
    save_model(path, tiny_model, TINY_CLASSES, preprocess)
    return path


@pytest.fixture(scope='module')
def alexnet_files(tmp_path_factory):
    directory = tmp_path_factory.mktemp('alexnet')
    np.random.seed(2)
    model = AlexNet(n_classes=7)
    npz = str(directory / 'alexnet.npz')
    save_model(npz, model, ['c%d' % i for i in range(7)], CaffePreprocess())
    path = str(directory / 'alexnet.onnx')
    export_onnx(npz, path)
    return model, path


def test_tiny_pooling_really_rounds_up():
    # the prototxt's pool1 must take the padded path, or the test below
    # would not cover it
    assert pooled_size(32, 3, 2, 0, ceil=True) == 16
    assert pooled_size(32, 3, 2, 0, ceil=False) == 15


def test_tiny_graph_file_matches_chainer(tiny_model, tiny_file, tmp_path):
    path = str(tmp_path / 'tiny.onnx')
    exported = export_onnx(tiny_file, path)
    x = random_input(1, (3, 36, 36))
    logits, prob = run_onnx(path, x)
    expected = chainer_logits(tiny_model, x)
    assert logits.shape == (1, 5)
    assert_close(logits, expected)
    assert_close(prob, F.softmax(expected).array)

    # the Caffe-specific pieces are in the graph as intended
    assert [attrs(n)['group'] for n in ops(exported, 'Conv')] == [1, 2]
    lrn, = ops(exported, 'LRN')
    assert attrs(lrn)['size'] == 3
    assert attrs(lrn)['alpha'] == pytest.approx(0.5)  # Caffe's alpha
    assert attrs(lrn)['bias'] == pytest.approx(2.0)
    assert len(ops(exported, 'Pad')) == 2  # ceil MAX pool, AVE pool
    assert len(ops(exported, 'AveragePool')) == 2  # WITHIN_CHANNEL, pool2
    assert [i.name for i in exported.graph.input] == ['data']
    assert [o.name for o in exported.graph.output] == ['logits', 'prob']


@pytest.mark.parametrize('opset', [7, 9, 10])
def test_older_opsets_match_chainer(tiny_model, opset):
    exported = to_onnx(tiny_model, (3, 36, 36), opset=opset)
    assert exported.opset_import[0].version == opset
    x = random_input(1, (3, 36, 36), seed=opset)
    assert_close(run_onnx(exported, x)[0], chainer_logits(tiny_model, x))


def test_dynamic_batch(tiny_model):
    exported = to_onnx(tiny_model, (3, 36, 36), batch_size=None)
    dims = exported.graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_param == 'N'
    x = random_input(3, (3, 36, 36), seed=5)
    logits, prob = run_onnx(exported, x)
    assert logits.shape == (3, 5)
    assert_close(logits, chainer_logits(tiny_model, x))


def test_fixed_batch_size(tiny_model):
    exported = to_onnx(tiny_model, (3, 36, 36), batch_size=2)
    dims = exported.graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_value for d in dims] == [2, 3, 36, 36]
    x = random_input(2, (3, 36, 36), seed=6)
    assert_close(run_onnx(exported, x)[0], chainer_logits(tiny_model, x))


def test_metadata_describes_preprocessing(tiny_file, tmp_path):
    path = str(tmp_path / 'tiny.onnx')
    export_onnx(tiny_file, path)
    props = {p.key: p.value for p in onnx.load(path).metadata_props}
    assert json.loads(props['class_names']) == TINY_CLASSES
    meta = read_metadata(path)
    assert meta['class_names'] == TINY_CLASSES
    assert meta['arch'] == 'caffe_graph'
    assert meta['size'] == (40, 40)
    assert meta['crop_size'] == 36
    assert meta['scale'] == 0.125
    assert meta['channels'] == 3
    assert meta['channel_order'] == 'BGR'
    np.testing.assert_array_equal(
        meta['mean'], np.array([10.0, 20.5, 30.25], np.float32)
        .reshape(3, 1, 1))


def test_alexnet_matches_chainer(alexnet_files):
    model, path = alexnet_files
    x = random_input(1, (3, 227, 227), seed=3)
    logits, prob = run_onnx(path, x)
    expected = chainer_logits(model, x)
    assert logits.shape == (1, 7)
    assert_close(logits, expected)
    assert_close(prob, F.softmax(expected).array)
    exported = onnx.load(path)
    assert [attrs(n)['group'] for n in ops(exported, 'Conv')] == [
        1, 2, 1, 2, 2]
    lrns = ops(exported, 'LRN')
    assert len(lrns) == 2
    for node in lrns:
        assert attrs(node)['size'] == 5
        assert attrs(node)['alpha'] == pytest.approx(1e-4)
        assert attrs(node)['beta'] == pytest.approx(0.75)
    assert len(ops(exported, 'MaxPool')) == 3
    meta = read_metadata(exported)
    assert meta['class_names'] == ['c%d' % i for i in range(7)]
    assert meta['crop_size'] == 227 and meta['arch'] == 'caffe_graph'


def test_unsupported_opset_is_a_clear_error(tiny_model):
    with pytest.raises(FinetuneError, match='opset 12'):
        to_onnx(tiny_model, (3, 36, 36), opset=12)


def test_missing_onnx_tells_how_to_install(tiny_file, tmp_path,
                                           monkeypatch):
    monkeypatch.setitem(sys.modules, 'onnx', None)  # import onnx fails
    path = str(tmp_path / 'never.onnx')
    with pytest.raises(FinetuneError) as info:
        export_onnx(tiny_file, path)
    message = str(info.value)
    assert "pip install 'finetune[onnx]'" in message
    assert '\n' not in message
    assert not os.path.exists(path)


def run_cli(*args):
    return subprocess.run([sys.executable, '-m', 'finetune.export'] +
                          list(args), cwd=ROOT, capture_output=True,
                          text=True, timeout=120)


def test_cli_writes_the_file(tiny_model, tiny_file, tmp_path):
    path = str(tmp_path / 'out' / 'model.onnx')
    proc = run_cli('--model', tiny_file, '--onnx', path, '--batch',
                   'dynamic', '--opset', '9')
    assert proc.returncode == 0, proc.stderr
    assert 'wrote' in proc.stdout
    exported = onnx.load(path)
    assert exported.opset_import[0].version == 9
    x = random_input(2, (3, 36, 36), seed=7)
    assert_close(run_onnx(exported, x)[0], chainer_logits(tiny_model, x))
    assert [f for f in os.listdir(os.path.dirname(path))] == ['model.onnx']


def test_cli_missing_model_is_one_line_exit_2(tmp_path):
    missing = str(tmp_path / 'nope.npz')
    path = str(tmp_path / 'model.onnx')
    proc = run_cli('--model', missing, '--onnx', path)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith('error: ') and missing in lines[0]
    assert not os.path.exists(path)
