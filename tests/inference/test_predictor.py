"""finetune.inference.predictor: ``finetune.load(path).predict(...)``."""
import numpy as np
import pytest
from PIL import Image

import finetune
from finetune.common.errors import DataError
from tests.support.paths import data_path


def test_predict_takes_one_path_image_or_array_and_refuses_empty(
        lenet_files, tmp_path):
    from finetune.weights.conversion import ConversionOptions
    from finetune.weights.conversion import convert_caffemodel
    npz = convert_caffemodel(lenet_files['caffemodel'],
                             str(tmp_path / 'lenet.npz'), ConversionOptions(
                                 prototxt=lenet_files['prototxt'],
                                 labels=lenet_files['labels'],
                                 scale=1 / 256))
    model = finetune.load(npz)
    path = data_path('cat.jpg')
    labels, probs = model.predict(path)  # one path, not its characters
    assert len(labels) == 1 and probs.shape == (1, 10)
    _, from_list = model.predict([path])
    np.testing.assert_array_equal(from_list, probs)
    # a path is decoded with PIL's draft mode, an image in memory fully
    image = Image.open(path).convert('RGB')
    _, expected = model.predict([image])
    for same in (image, np.asarray(image), np.asarray(image.convert('L'))):
        _, again = model.predict(same)
        np.testing.assert_allclose(again, expected, atol=1e-5)
    with pytest.raises(DataError, match='empty image'):
        model.predict(Image.new('RGB', (0, 0)))
    with pytest.raises(DataError, match='expected uint8'):
        model.predict(np.zeros((4, 4, 3), np.float32))


@pytest.mark.parametrize('cut', ['empty', 'half', 'text'])
def test_broken_model_files_are_one_line(alexnet_npz, tmp_path, cut):
    from finetune.common.errors import CheckpointError
    from tests.support.processes import run_module
    data = open(alexnet_npz, 'rb').read()
    broken = tmp_path / 'model.npz'
    broken.write_bytes({'empty': b'', 'half': data[:len(data) // 2],
                        'text': b'hello\n'}[cut])
    with pytest.raises(CheckpointError, match='model.npz'):
        finetune.load(str(broken))
    for command in (['finetune.predict', '--model', str(broken),
                     data_path('cat.jpg')],
                    ['finetune.export', '--model', str(broken), '-o',
                     str(tmp_path / 'm.onnx')]):
        result = run_module(*command)
        assert result.returncode == 2, result.stderr[-1000:]
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_features_on_both_backends_agree_and_unknown_layers_are_listed(
        alexnet_npz):
    """fc7 and pool5 of AlexNet from OpenCV and from Chainer agree to 1e-5
    of the largest value; ReLU is applied (Caffe's blob after relu7)."""
    from finetune.common.errors import FinetuneError
    images = [data_path('cat.jpg'), data_path('fish-bike.jpg')]
    fast, slow = finetune.load(alexnet_npz), finetune.load(
        alexnet_npz, backend='chainer')
    assert fast.engine == 'opencv' and slow.engine == 'chainer (CPU)'
    assert list(fast.feature_layers()) == [
        'pool1', 'pool2', 'conv3', 'conv4', 'pool5', 'fc6', 'fc7', 'fc8']
    for layer, shape in (('fc7', (4096,)), ('pool5', (256, 6, 6))):
        a, b = fast.features(images, layer), slow.features(images, layer)
        assert a.dtype == b.dtype == np.float32
        assert a.shape == b.shape == (2,) + shape
        assert np.abs(a - b).max() <= 1e-5 * np.abs(b).max()
        assert (b >= 0).all()
    with pytest.raises(FinetuneError, match=r"'fc9'.*valid: pool1, pool2"):
        fast.features(images, 'fc9')
    with pytest.raises(FinetuneError, match='batch_size'):
        fast.features(images, 'fc7', batch_size=0)
    for bad in (0, -1):
        with pytest.raises(FinetuneError, match='batch_size: expected'):
            fast.predict(images, batch_size=bad)


@pytest.mark.parametrize('backend', ['opencv', 'chainer'])
def test_lenet_features_are_the_layers_arithmetic(lenet_files, tmp_path,
                                                   backend):
    """ip1 = relu(pool2 . W1 + b1) and softmax(ip1 . W2 + b2) = predict(),
    computed here with NumPy from the stored weights."""
    from finetune.weights.conversion import ConversionOptions
    from finetune.weights.conversion import convert_caffemodel
    npz = convert_caffemodel(lenet_files['caffemodel'],
                             str(tmp_path / 'lenet.npz'), ConversionOptions(
                                 prototxt=lenet_files['prototxt'],
                                 labels=lenet_files['labels'],
                                 scale=1 / 256))
    model = finetune.load(npz, backend=backend)
    images = [data_path('cat.jpg'), data_path('fish-bike.jpg')]
    weights = np.load(npz)
    w1, b1 = weights['ip1/W'], weights['ip1/b']
    w2, b2 = weights['ip2/W'], weights['ip2/b']
    pool2 = model.features(images, 'pool2').reshape(2, -1)
    ip1 = np.maximum(pool2 @ w1.T + b1, 0)
    np.testing.assert_allclose(model.features(images, 'ip1'), ip1,
                               atol=1e-5 * np.abs(ip1).max())
    logits = ip1 @ w2.T + b2
    expected = np.exp(logits - logits.max(1, keepdims=True))
    expected /= expected.sum(1, keepdims=True)
    np.testing.assert_allclose(model.predict(images)[1], expected,
                               atol=1e-5)


def test_graph_net_features_agree_on_both_backends(small_nets, tmp_path):
    """A ResNet-shaped DAG: every feature layer (blobs crossing a cut)
    from OpenCV equals Chainer's to 1e-5 of the largest value."""
    from finetune.weights.conversion import ConversionOptions
    from finetune.weights.conversion import convert_caffemodel
    net = small_nets['resnet_small']
    npz = convert_caffemodel(net['caffemodel'], str(tmp_path / 'r.npz'),
                             ConversionOptions(prototxt=net['prototxt']))
    fast, slow = finetune.load(npz), finetune.load(npz, backend='chainer')
    assert fast.fast is not None
    images = [data_path('cat.jpg'), data_path('fish-bike.jpg')]
    assert len(fast.feature_layers()) >= 3
    for layer in fast.feature_layers():
        a, b = fast.features(images, layer), slow.features(images, layer)
        assert a.shape == b.shape and a.shape[0] == 2
        assert np.abs(a - b).max() <= 1e-5 * max(np.abs(b).max(), 1e-30)
