"""ONNX export of graph nets: the small random-weight ResNet, inception and
SqueezeNet nets (BatchNorm, Scale, Eltwise, Concat, global pooling), as
converted and after fine-tuning, run by onnx's ``ReferenceEvaluator``.

Two of its kernels are replaced by transcriptions of the operators'
specifications: LRN (see tests/inference/test_onnx.py) and
BatchNormalization. onnx < 1.19 runs an opset 9-13 BatchNormalization
with a ``momentum`` attribute (onnx_chainer writes 0.0) as in training, on
the batch's own statistics, although a node with one output is the
inference form (onnx/onnx#8442). Every other operator is onnx's own.
"""
import re

import chainer
import chainer.functions as F
import numpy as np
import pytest

onnx = pytest.importorskip('onnx')
pytest.importorskip('onnx_chainer')
from onnx.numpy_helper import to_array  # NOQA: E402
from onnx.reference import ReferenceEvaluator  # NOQA: E402
from onnx.reference.op_run import OpRun  # NOQA: E402

import finetune  # NOQA: E402
from finetune.weights.conversion import ConversionOptions  # NOQA: E402
from finetune.weights.conversion import convert_caffemodel  # NOQA: E402
from finetune.inference.onnx import export_onnx  # NOQA: E402
from finetune.inference.onnx import read_metadata  # NOQA: E402
from finetune.models.model_file import load_model  # NOQA: E402
from tests.support.onnx_ops import LRN  # NOQA: E402
from tests.support.graph_nets import NETS  # NOQA: E402
from tests.support.graph_nets import SHAPES  # NOQA: E402
from tests.support.graph_nets import config  # NOQA: E402
from tests.support.graph_nets import entries  # NOQA: E402
from tests.support.graph_nets import graph_nets  # NOQA: E402,F401
from tests.support.graph_nets import photos  # NOQA: E402,F401


class BatchNormalization(OpRun):
    """ONNX BatchNormalization with one output, as specified: ``scale *
    (x - mean) / sqrt(var + epsilon) + B`` with the given mean and var."""

    def _run(self, x, scale, bias, mean, var, epsilon=None, momentum=None,
             training_mode=None):
        shape = (1, -1) + (1,) * (x.ndim - 2)
        y = (x - mean.reshape(shape)) / np.sqrt(var.reshape(shape) +
                                                epsilon)
        return ((y * scale.reshape(shape) + bias.reshape(shape))
                .astype(x.dtype),)


def run_onnx(path, x):
    """(logits, prob) of the exported file on ``x``."""
    return ReferenceEvaluator(path, new_ops=[LRN, BatchNormalization]).run(
        None, {'data': x})


def chainer_logits(model, x):
    with chainer.using_config('train', False), chainer.no_backprop_mode():
        return model(x).array


def check_outputs(path, model, x):
    """Logits within 1e-5 of the largest one, probabilities within 1e-5."""
    logits, prob = run_onnx(path, x)
    expected = chainer_logits(model, x)
    assert logits.shape == expected.shape
    assert np.abs(logits - expected).max() < 1e-5 * np.abs(expected).max()
    assert np.abs(prob - F.softmax(expected).array).max() < 1e-5


def layer_types(prototxt):
    """Caffe layer type -> names, in prototxt order, read from the file."""
    with open(prototxt) as f:
        text = f.read()
    found = {}
    for name, kind in re.findall(
            r'layer \{ name: "([^"]+)" type: "(\w+)"', text):
        found.setdefault(kind, []).append(name)
    return found


def nodes(onnx_model, op_type):
    return [n for n in onnx_model.graph.node if n.op_type == op_type]


def check_graph(onnx_model, model, prototxt):
    """BatchNorm layers are BatchNormalization nodes holding the model's
    statistics and eps; Scale layers Mul (and Add with bias_term), Eltwise
    SUM Add, Concat Concat."""
    types = layer_types(prototxt)
    weights = {t.name: to_array(t) for t in onnx_model.graph.initializer}
    batch_norms = {node.input[3]: node for node in
                   nodes(onnx_model, 'BatchNormalization')}
    assert len(batch_norms) == len(types.get('BatchNorm', []))
    for name in types.get('BatchNorm', []):
        link = model[name]
        node, = [batch_norms[mean] for mean in batch_norms
                 if np.array_equal(weights[mean], link.mean)]
        assert np.array_equal(weights[node.input[4]], link.var), name
        eps, = [a.f for a in node.attribute if a.name == 'epsilon']
        assert eps == pytest.approx(link.eps), name
    scales = types.get('Scale', [])
    biased = [n for n in scales if model[n].b is not None]
    # a Mul by a Constant is Caffe's ceil-rounded average pooling (right
    # after its AveragePool); every other Mul is a Scale layer, and every
    # Add a Scale bias or an Eltwise SUM: exactly as many as the prototxt
    constants = {out for n in nodes(onnx_model, 'Constant')
                 for out in n.output}
    producer = {out: n.op_type for n in onnx_model.graph.node
                for out in n.output}
    by_constant = [n for n in nodes(onnx_model, 'Mul')
                   if constants.intersection(n.input)]
    assert all(producer[n.input[0]] == 'AveragePool' for n in by_constant)
    assert len(nodes(onnx_model, 'Mul')) - len(by_constant) == len(scales)
    assert len(nodes(onnx_model, 'Add')) == \
        len(biased) + len(types.get('Eltwise', []))
    assert len(nodes(onnx_model, 'Concat')) == len(types.get('Concat', []))


@pytest.mark.parametrize('name', NETS)
def test_graph_net_exports_what_chainer_computes(name, small_nets,
                                                 tmp_path):
    files = small_nets[name]
    npz = str(tmp_path / 'net.npz')
    convert_caffemodel(files['caffemodel'], npz, ConversionOptions(
        prototxt=files['prototxt']))
    path = str(tmp_path / 'net.onnx')
    exported = export_onnx(npz, path, batch_size=None)
    model, _, prep = load_model(npz)
    rng = np.random.RandomState(len(name))
    for x in (rng.normal(0, 1, (3,) + prep.input_shape),
              rng.uniform(-120, 120, (2,) + prep.input_shape)):
        check_outputs(path, model, x.astype(np.float32))
    check_graph(exported, model, files['prototxt'])
    assert [i.name for i in exported.graph.input] == ['data']


@pytest.mark.parametrize('name', NETS)
def test_fine_tuned_graph_net_exports_its_new_weights(
        name, graph_nets, photos, tmp_path):  # NOQA: F811
    """A run that trains the BatchNorm/Scale/Eltwise/Concat layers: the
    file computes what model_final.npz computes on the validation photos,
    with the statistics BatchNorm learned."""
    out = tmp_path / 'out'
    run = finetune.fit(config(name, graph_nets, photos, out, epochs=1,
                              freeze=SHAPES[name].shallow))
    path = str(tmp_path / 'tuned.onnx')
    exported = export_onnx(run.model_final, path, batch_size=None)
    model, meta, prep = load_model(run.model_final)
    paths, _ = entries(out, photos, 'val')
    check_outputs(path, model, np.stack([prep(p) for p in paths]))
    check_graph(exported, model, graph_nets[name]['prototxt'])
    assert read_metadata(path)['class_names'] == ['cool', 'warm']
    if name == 'resnet_small':
        before, _, _ = load_model(graph_nets[name]['model'])
        assert not np.array_equal(model['bn2b_branch2c'].mean,
                                  before['bn2b_branch2c'].mean)
