"""The OpenCV path for a frozen prefix of a DAG net equals Chainer's
``forward(x, stop=k)``: on open_nsfw cut in the middle and on the small
nets at every valid cut."""
import chainer
import numpy as np
import pytest

from tests.support.models import backend_probabilities
from tests.support.paths import data_path
from finetune.caffe.importer import import_caffemodel
from finetune.common.errors import CaffeModelError
from finetune.data.transforms import CaffePreprocess
from finetune.models import CaffeGraph
from finetune.models.model_file import save_model
from finetune.models.opencv_runner import OpenCVStages
from finetune.models.opencv_runner import select_engine
from finetune.models.opencv_runner import graph_definition
from finetune.training.surgery import FineTuneNet


def relative_error(actual, reference):
    return np.abs(actual - reference).max() / np.abs(reference).max()


def chainer_forward(model, x, **cut):
    with chainer.using_config('train', False), chainer.no_backprop_mode():
        return model.forward(x, **cut).array


def loaded(files, **kwargs):
    model = CaffeGraph.from_prototxt(files['prototxt'], **kwargs)
    import_caffemodel(model, files['caffemodel'])
    return model


def test_open_nsfw_prefix_on_opencv(open_nsfw):
    """Frozen through stage 2 block 3 (its Eltwise and ReLU): the one blob
    crossing is eltwise_stage2_block3, OpenCV's relu_stage2_block3."""
    model = loaded(open_nsfw, initialW=chainer.initializers.Zero())
    k = model.layer_names.index('conv_stage2_block4_branch2a')
    assert k in model.valid_cuts()
    assert model.cut_blobs(k) == ['eltwise_stage2_block3']
    prep = CaffePreprocess(size=(256, 256), crop_size=224,
                           mean=[104, 117, 123])
    x = np.stack([prep(data_path(p)) for p in
                  ('cat.jpg', 'cat_gray.jpg', 'fish-bike.jpg')])
    trunk = OpenCVStages(model, k)
    assert trunk.output == 'relu_stage2_block3'
    features = trunk(x)
    expected = chainer_forward(model, x, stop=k)
    assert features.shape == expected.shape == (3, 512, 14, 14)
    assert relative_error(features, expected) < 1e-5
    # the rest on Chainer from OpenCV's features: the whole net's logits
    logits = chainer_forward(model, features, start=k)
    assert relative_error(logits, chainer_forward(model, x)) < 1e-5
    full = OpenCVStages(model)
    assert full.output == 'fc_nsfw'
    assert relative_error(full(x), chainer_forward(model, x)) < 1e-5


@pytest.mark.parametrize('name', ['resnet_small', 'inception_small',
                                  'squeeze_small', 'mixed_small', 'v1_dag'])
def test_small_net_prefixes_on_opencv(name, small_nets):
    model = loaded(small_nets[name])
    x = np.random.RandomState(0).normal(
        0, 1, (3,) + model.net_input_shape).astype(np.float32)
    cuts = model.valid_cuts()
    assert len(cuts) >= 3
    for k in cuts:
        expected = chainer_forward(model, x, stop=k)
        actual = OpenCVStages(model, k)(x)
        assert actual.shape == expected.shape
        assert relative_error(actual, expected) < 1e-5, (name, k)


def test_cut_at_the_input_and_invalid_cuts(small_nets):
    model = loaded(small_nets['resnet_small'])
    x = np.random.RandomState(1).normal(0, 1, (2, 3, 32, 32)).astype('f')
    kept, output = graph_definition(model, 0)
    assert [l.type for l in kept.layer] == ['Input', 'Dropout']
    assert np.array_equal(OpenCVStages(model, 0)(x), x)
    with pytest.raises(CaffeModelError, match='2 blobs cross it'):
        OpenCVStages(model, 'res2a_branch2b')
    kept, output = graph_definition(model, 'res2b_relu')
    assert output == 'res2b'  # the Eltwise, before its in-place ReLU
    assert [l.name for l in kept.layer][-1] == 'res2b'


def test_squeeze_output_is_flattened_like_chainer(small_nets):
    """SqueezeNet's output is pooled (N, K, 1, 1): both give (N, K)."""
    model = loaded(small_nets['squeeze_small'])
    x = np.random.RandomState(2).normal(0, 1, (2, 3, 32, 32)).astype('f')
    full = select_engine(model)
    assert full(x).shape == (2, 5)
    assert relative_error(full(x), chainer_forward(model, x)) < 1e-5


def test_frozen_graph_trunk_uses_opencv(small_nets):
    model = loaded(small_nets['inception_small'])
    k = model.layer_names.index('loss3/classifier')
    x = np.random.RandomState(3).normal(0, 1, (4, 3, 28, 28)).astype('f')
    with chainer.using_config('train', True):  # dropout is in the trunk
        fast = FineTuneNet(model, k).features(x)
    with chainer.using_config('train', False):
        slow = FineTuneNet(model, k, trunk_backend='chainer').features(x)
    assert not fast.requires_grad
    assert relative_error(fast.array, slow.array) < 1e-5


def test_predictor_backends_agree_on_a_graph(small_nets, tmp_path):
    model = loaded(small_nets['resnet_small'])
    path = str(tmp_path / 'resnet.npz')
    prep = CaffePreprocess(size=(36, 36), crop_size=32)
    save_model(path, model, list('abcde'), prep)
    p_fast, p_slow = backend_probabilities(path)
    assert p_fast.shape == (2, 5)
    assert np.abs(p_fast - p_slow).max() < 1e-5
