"""The OpenCV path for frozen layers and inference equals Chainer's."""
import chainer
import numpy as np
import pytest

import finetune
from tests.support.models import backend_probabilities
from tests.support.paths import data_path
from finetune.caffe.caffemodel import parse_net_text
from finetune.models.model_file import save_model
from finetune.models import AlexNet
from finetune.models import CaffeGraph
from finetune.models import CaffeNet
from finetune.models.opencv_runner import OpenCVStages
from finetune.models.opencv_runner import graph_definition
from finetune.models.opencv_runner import select_engine
from finetune.training.surgery import FineTuneNet
from finetune.data.transforms import CaffePreprocess


def relative_error(actual, reference):
    return np.abs(actual - reference).max() / np.abs(reference).max()


def chainer_forward(model, x, stop=None):
    with chainer.using_config('train', False), chainer.no_backprop_mode():
        return model.forward(x, stop=stop).array


def layers(text):
    return [(l.name, l.type, list(l.bottom), list(l.top),
             str(l.convolution_param), str(l.pooling_param),
             str(l.lrn_param), str(l.inner_product_param),
             str(l.dropout_param)) for l in parse_net_text(text).layer]


def test_alexnet_definition_is_bvlc_alexnet(alexnet_deploy):
    assert layers(AlexNet().definition()) == \
        layers(open(alexnet_deploy).read())


def test_caffenet_definition_is_the_flickr_style_net_with_fc8():
    """BVLC CaffeNet: Caffe's Flickr-Style deploy net (an independent
    copy in the test data) with fc8_flickr named fc8."""
    flickr = open(data_path('caffe', 'flickr_style_deploy.prototxt')).read()
    assert layers(CaffeNet(n_classes=20).definition()) == \
        layers(flickr.replace('fc8_flickr', 'fc8'))
    assert 'num_output: 1000' in CaffeNet().definition()


@pytest.mark.parametrize('cls', [AlexNet, CaffeNet])
def test_alexnet_trunk_and_full_net_match_chainer(cls):
    model = cls(n_classes=7, initialW=chainer.initializers.Normal(0.01))
    x = np.random.RandomState(0).uniform(-100, 100, (3, 3, 227, 227))
    x = x.astype(np.float32)
    trunk = OpenCVStages(model, 5)
    assert trunk.output == 'pool5'
    assert relative_error(trunk(x), chainer_forward(model, x, 5)) < 1e-5
    full = OpenCVStages(model)
    assert full.output == 'fc8'
    assert OpenCVStages(model, 6).output == 'drop6'
    assert relative_error(full(x), chainer_forward(model, x)) < 1e-5
    # the runner holds the weights it was built with
    model.conv1.W.array *= 2
    assert relative_error(trunk(x), chainer_forward(model, x, 5)) > 1e-2


def test_lenet_stages_match_chainer(lenet_files):
    from finetune.caffe.importer import import_caffemodel
    model = CaffeGraph.from_prototxt(lenet_files['prototxt'])
    import_caffemodel(model, lenet_files['caffemodel'])
    x = np.random.RandomState(1).rand(4, 1, 28, 28).astype(np.float32)
    for stop, blob in ((1, 'pool1'), (2, 'pool2'), (3, 'relu1'),
                       (4, 'ip2')):
        stages = OpenCVStages(model, stop)
        assert stages.output == blob
        assert relative_error(stages(x), chainer_forward(model, x, stop)) \
            < 1e-5


def test_truncation_keeps_whole_stages():
    kept, output = graph_definition(AlexNet(), 2)
    assert [l.name for l in kept.layer] == [
        'data', 'conv1', 'relu1', 'norm1', 'pool1', 'conv2', 'relu2',
        'norm2', 'pool2']
    assert output == 'pool2'


#: a net OpenCV cannot run exactly: it ignores LRN's k
LRN_K_NET = '''
input: "data" input_shape { dim: 1 dim: 3 dim: 9 dim: 9 }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
        convolution_param { num_output: 4 kernel_size: 3 } }
layer { name: "norm1" type: "LRN" bottom: "conv1" top: "norm1"
        lrn_param { local_size: 3 k: 2 } }
layer { name: "fc" type: "InnerProduct" bottom: "norm1" top: "fc"
        inner_product_param { num_output: 2 } }'''


def test_lrn_with_k_stays_on_chainer():
    model = CaffeGraph.from_text(LRN_K_NET)
    assert select_engine(model) is None
    net = FineTuneNet(model, 1, trunk_backend='opencv')
    with pytest.raises(finetune.FinetuneError,
                       match='^--trunk-backend opencv: .*LRN k'):
        net.features(np.zeros((1, 3, 9, 9), np.float32))
    # inference decides in the same place, with the same message
    from finetune.inference.predictor import Predictor
    with pytest.raises(finetune.FinetuneError,
                       match='^--backend opencv: .*LRN k'):
        Predictor(model, ['a', 'b'], CaffePreprocess(
            (9, 9), None, None, channels=3), backend='opencv')
    assert Predictor(model, ['a', 'b'], CaffePreprocess(
        (9, 9), None, None, channels=3), backend='auto').engine == \
        'chainer (CPU)'
    with pytest.raises(finetune.FinetuneError, match='--backend fast: '):
        select_engine(model, 'fast')


def test_train_refuses_an_opencv_trunk_it_cannot_have_before_training(
        tmp_path):
    """--trunk-backend opencv on a net OpenCV cannot run exactly is one
    line before anything is read or written, also with nothing frozen
    (where only the final evaluation would have used it); on a GPU it is
    ignored, as there."""
    from finetune.models.opencv_runner import check_engine
    from finetune.training.fit import fit
    from finetune.weights.random_model import write_random_caffemodel
    prototxt = tmp_path / 'lrn_k.prototxt'
    prototxt.write_text(LRN_K_NET)
    caffemodel = str(tmp_path / 'lrn_k.caffemodel')
    write_random_caffemodel(str(prototxt), caffemodel, seed=0)
    out = tmp_path / 'out'
    for freeze in ('none', 'conv1'):
        with pytest.raises(finetune.FinetuneError,
                           match='^--trunk-backend opencv: .*LRN k'):
            fit(finetune.TrainConfig(
                data=str(tmp_path / 'photos'), pretrained=caffemodel,
                prototxt=str(prototxt), freeze=freeze, replace='fc',
                trunk_backend='opencv', out=str(out)))
    assert not out.exists()
    model = CaffeGraph.from_text(LRN_K_NET)
    check_engine(model, 'opencv', '--trunk-backend', on_cpu=False)

def test_predictor_backends_agree(tmp_path):
    model = AlexNet(n_classes=4, initialW=chainer.initializers.Normal(0.01))
    path = str(tmp_path / 'm.npz')
    save_model(path, model, list('abcd'), CaffePreprocess())
    p_fast, p_slow = backend_probabilities(path)
    assert np.abs(p_fast - p_slow).max() < 1e-5
    assert np.allclose(p_fast.sum(axis=1), 1)


def test_frozen_trunk_features_use_opencv_and_match(digits):
    from finetune.models.model_file import load_model
    model, _, _ = load_model(digits[1])
    x = np.random.RandomState(2).rand(5, 1, 28, 28).astype(np.float32)
    fast = FineTuneNet(model, 2).features(x)
    slow = FineTuneNet(model, 2, trunk_backend='chainer').features(x)
    assert fast.creator is None and not fast.requires_grad
    assert relative_error(fast.array, slow.array) < 1e-5
