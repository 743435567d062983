"""Every net is a CaffeGraph and its model file says so with one ``arch``;
files written with the older values ('alexnet', 'caffenet': no stored
prototxt; 'caffe': a stored prototxt) still load and compute the same."""
import json

import chainer
import numpy as np
import pytest

from finetune.common.fileio import write_npz
from finetune.data.transforms import CaffePreprocess
from finetune.models import AlexNet
from finetune.models import CaffeGraph
from finetune.models import CaffeNet
from finetune.models.model_file import load_model
from finetune.models.model_file import read_model_meta
from finetune.models.model_file import save_model

TINY = '''
name: "tiny"
input: "data" input_shape { dim: 1 dim: 3 dim: 12 dim: 12 }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
        convolution_param { num_output: 4 kernel_size: 3 } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "fc" type: "InnerProduct" bottom: "conv1" top: "fc"
        inner_product_param { num_output: 3 } }'''


def logits(model, x):
    with chainer.using_config('train', False), chainer.no_backprop_mode():
        return model(x).array


def rewrite_meta(path, out, change):
    """Copy the model file ``path`` to ``out`` with its metadata changed by
    ``change(meta)``, written by the project's npz writer (as the older
    versions wrote their files)."""
    with np.load(path) as npz:
        arrays = {key: npz[key] for key in npz.files}
    meta = json.loads(str(arrays['__meta__']))
    change(meta)
    arrays['__meta__'] = np.array(json.dumps(meta))
    write_npz(out, arrays)


@pytest.mark.parametrize('make, old_arch, first', [
    (AlexNet, 'alexnet', ('conv1', 'relu1', 'norm1', 'pool1')),
    (CaffeNet, 'caffenet', ('conv1', 'relu1', 'pool1', 'norm1'))])
def test_old_alexnet_and_caffenet_files_load(tmp_path, make, old_arch,
                                             first):
    model = make(n_classes=3, initialW=chainer.initializers.Normal(0.01))
    assert isinstance(model, CaffeGraph)
    assert model.layer_order[:4] == first
    prep = CaffePreprocess()
    new = str(tmp_path / 'new.npz')
    save_model(new, model, list('abc'), prep)
    meta = read_model_meta(new)
    assert meta['arch'] == 'caffe_graph' and 'prototxt' in meta
    old = str(tmp_path / 'old.npz')

    def old_layout(meta):  # what files of the AlexNet chain held
        meta['arch'] = old_arch
        del meta['prototxt']
    rewrite_meta(new, old, old_layout)
    assert read_model_meta(old)['arch'] == old_arch
    x = np.random.RandomState(0).uniform(-100, 100, (2, 3, 227, 227))
    x = x.astype(np.float32)
    expected = logits(model, x)
    assert np.abs(expected).max() > 0
    for path in (new, old):
        loaded, _, _ = load_model(path)
        assert loaded.layer_order == model.layer_order
        np.testing.assert_array_equal(logits(loaded, x), expected)


def test_old_caffe_arch_files_load(tmp_path):
    model = CaffeGraph.from_text(TINY)
    prep = CaffePreprocess((12, 12), None, None, channels=3)
    new = str(tmp_path / 'new.npz')
    save_model(new, model, list('abc'), prep)
    old = str(tmp_path / 'old.npz')
    rewrite_meta(new, old, lambda meta: meta.update(arch='caffe'))
    x = np.random.RandomState(1).normal(0, 1, (2, 3, 12, 12)).astype('f')
    expected = logits(model, x)
    for path in (new, old):
        loaded, meta, _ = load_model(path)
        np.testing.assert_array_equal(logits(loaded, x), expected)
    assert meta['arch'] == 'caffe'


def test_an_old_alexnet_file_with_another_fc8_is_refused(tmp_path):
    """An old file's fc8 rows are still checked against its n_classes
    before the net is built."""
    model = CaffeGraph.from_text(TINY)
    new = str(tmp_path / 'new.npz')
    save_model(new, model, list('abc'),
               CaffePreprocess((12, 12), None, None, channels=3))
    old = str(tmp_path / 'old.npz')
    rewrite_meta(new, old, lambda meta: (meta.update(arch='alexnet'),
                                         meta.pop('prototxt')))
    from finetune.common.errors import CheckpointError
    with pytest.raises(CheckpointError, match='fc8'):
        load_model(old)
