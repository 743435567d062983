"""CaffeGraph computes what Caffe computes on DAG nets, checked against
OpenCV's independent implementation (``cv2.dnn.readNetFromCaffe``), on the
real open_nsfw ResNet and on random-weight nets of the classic shapes.

Both sides read the same prototxt and caffemodel files.
"""
import chainer
import chainer.functions as F
import cv2
import numpy as np
import pytest

from tests.support.paths import data_path
from finetune.caffe.caffemodel import read_caffemodel
from finetune.caffe.importer import import_caffemodel
from finetune.weights.random_model import write_random_caffemodel
from finetune.data.transforms import CaffePreprocess
from finetune.models import CaffeGraph

#: name -> the blob of the logits (the classifier's output) in OpenCV
LOGITS = {'resnet_small': 'fc5', 'inception_small': 'loss3/classifier',
          'squeeze_small': 'pool10', 'mixed_small': 'fc', 'v1_dag': 'fc'}
PHOTOS = ('cat.jpg', 'cat_gray.jpg', 'fish-bike.jpg')


def relative_error(actual, reference):
    return np.abs(actual - reference).max() / np.abs(reference).max()


def chainer_outputs(model, x):
    with chainer.using_config('train', False), chainer.no_backprop_mode():
        logits = model(x).array
    return logits, F.softmax(logits).array


def opencv_outputs(prototxt, caffemodel, x, logits_blob):
    net = cv2.dnn.readNetFromCaffe(prototxt, caffemodel)
    net.setInput(x)
    logits, prob = net.forward([logits_blob, 'prob'])
    return logits.reshape(len(x), -1), prob.reshape(len(x), -1)


def random_inputs(shape, seed):
    """Unit-scale inputs (logits of a few units: probabilities that are
    not all 0 or 1) and 0-255-scale ones (large logits)."""
    rng = np.random.RandomState(seed)
    return [rng.normal(0, 1, (3,) + shape).astype(np.float32),
            rng.uniform(-120, 120, (2,) + shape).astype(np.float32)]


def check_parity(model, prototxt, caffemodel, logits_blob, inputs):
    """Max logit error (relative to the largest logit), max probability
    error, over ``inputs``."""
    errors = []
    for x in inputs:
        logits, prob = chainer_outputs(model, x)
        ref_logits, ref_prob = opencv_outputs(prototxt, caffemodel, x,
                                              logits_blob)
        assert logits.shape == ref_logits.shape == (len(x), model.n_classes)
        errors.append((relative_error(logits, ref_logits),
                       np.abs(prob - ref_prob).max()))
        assert errors[-1][0] < 1e-5, errors
        assert errors[-1][1] < 1e-4, errors
    return errors


@pytest.mark.parametrize('name', sorted(LOGITS))
def test_small_nets_match_opencv(name, small_nets):
    files = small_nets[name]
    model = CaffeGraph.from_prototxt(files['prototxt'])
    loaded = import_caffemodel(model, files['caffemodel'])
    assert loaded == list(model.layer_names)
    inputs = random_inputs(model.net_input_shape, seed=len(name))
    check_parity(model, files['prototxt'], files['caffemodel'], LOGITS[name],
                 inputs)
    # the probabilities compared are not all saturated at 0 or 1
    _, ref_prob = opencv_outputs(files['prototxt'], files['caffemodel'],
                                 inputs[0], LOGITS[name])
    assert ((ref_prob > 1e-3) & (ref_prob < 0.999)).sum() >= 2


def test_layer_types_of_the_small_nets(small_nets):
    """The parity nets hold the layer kinds they are meant to cover."""
    kinds = {}
    for name in LOGITS:
        model = CaffeGraph.from_prototxt(small_nets[name]['prototxt'])
        for layer in model.net_param.layer:
            kinds.setdefault(layer.type, set()).add(name)
    expected = {'Convolution', 'Pooling', 'LRN', 'InnerProduct', 'Dropout',
                'ReLU', 'PReLU', 'Sigmoid', 'TanH', 'Softmax', 'Concat',
                'Eltwise', 'BatchNorm', 'Scale', 'Split', 'Slice', 'Flatten'}
    assert expected <= set(kinds)
    text = open(data_path('caffe', 'mixed_small.prototxt')).read()
    for feature in ('operation: PROD', 'operation: MAX', 'coeff: -1',
                    'dilation: 2', 'channel_shared: true', 'kernel_h: 3',
                    'negative_slope: 0.1', 'axis: 0'):
        assert feature in text


@pytest.mark.parametrize('caffemodel_v1', [False, True])
def test_v1_dag_net_matches_opencv(caffemodel_v1, tmp_path):
    """A V1 prototxt (``layers``, enum types, input_dim) of a DAG net, with
    a V1 or V2 caffemodel."""
    prototxt = data_path('caffe', 'v1_dag.prototxt')
    caffemodel = str(tmp_path / 'v1_dag.caffemodel')
    write_random_caffemodel(prototxt, caffemodel, seed=7, v1=caffemodel_v1)
    stored = read_caffemodel(caffemodel).layers[0].param
    assert (stored.DESCRIPTOR.name == 'V1LayerParameter') == caffemodel_v1
    model = CaffeGraph.from_prototxt(prototxt)
    assert model.net_input_shape == (3, 16, 16)
    assert model.layer_names == ('conv1', 'conv2', 'fc')
    import_caffemodel(model, caffemodel)
    check_parity(model, prototxt, caffemodel, 'fc',
                 random_inputs(model.net_input_shape, seed=8))


def test_resnet_batchnorm_scale_factor_is_divided(small_nets):
    """The caffemodel stores BatchNorm sums times a factor (not 1): using
    the sums undivided breaks parity, so the test above can fail."""
    files = small_nets['resnet_small']
    factor = files['weights']['bn_conv1'][2][0]
    assert abs(factor - 1) > 0.5
    model = CaffeGraph.from_prototxt(files['prototxt'])
    import_caffemodel(model, files['caffemodel'])
    x = random_inputs(model.net_input_shape, seed=1)[0]
    ref, _ = opencv_outputs(files['prototxt'], files['caffemodel'], x, 'fc5')
    for name in model.layer_names:
        if name.startswith('bn'):
            model[name].mean *= model[name].factor
            model[name].var *= model[name].factor
    assert relative_error(chainer_outputs(model, x)[0], ref) > 1e-2


def photo_batch():
    """The 3 real photos as open_nsfw expects them: 256x256, centre
    224x224 crop, BGR minus (104, 117, 123)."""
    prep = CaffePreprocess(size=(256, 256), crop_size=224,
                           mean=[104, 117, 123])
    return np.stack([prep(data_path(p)) for p in PHOTOS])


def test_real_open_nsfw_matches_opencv(open_nsfw):
    """Yahoo's trained ResNet-50-1by2 (53 Convolution + BatchNorm + Scale,
    16 Eltwise; a V2 caffemodel with Caffe's Split layers)."""
    model = CaffeGraph.from_prototxt(open_nsfw['prototxt'],
                                     initialW=chainer.initializers.Zero())
    loaded = import_caffemodel(model, open_nsfw['caffemodel'])
    assert len(loaded) == 53 * 3 + 1
    assert model.n_classes == 2 and model.classifier_name == 'fc_nsfw'
    photos = photo_batch()
    assert photos.shape == (3, 3, 224, 224)
    noise = np.random.RandomState(3).uniform(-120, 120, (2, 3, 224, 224))
    errors = check_parity(model, open_nsfw['prototxt'],
                          open_nsfw['caffemodel'], 'fc_nsfw',
                          [photos, noise.astype(np.float32)])
    assert max(e[0] for e in errors) < 1e-5
    # a cat and a fish-bike are safe for work (OpenCV's verdict)
    _, ref_prob = opencv_outputs(open_nsfw['prototxt'],
                                 open_nsfw['caffemodel'], photos, 'fc_nsfw')
    assert (ref_prob[:, 1] < 0.5).all()
