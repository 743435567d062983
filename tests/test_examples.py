"""The examples run: AlexNet Flickr-Style fine-tuning and the inference
script, with a random-weights BVLC AlexNet standing in for the real one."""
import os
import subprocess
import sys

import cv2
import numpy as np

import finetune
from finetune.caffe.caffemodel import read_prototxt_param
from finetune.weights.random_model import ALEXNET_DEPLOY
from finetune.caffe.writer import caffemodel_bytes
from tests.support.photos import write_style_folder

EXAMPLES = os.path.join(os.path.dirname(__file__), '..', 'examples')


def opencv_probabilities(model_path, images):
    """The model file's weights run by OpenCV's Caffe implementation (an
    independent forward pass) on the inputs finetune prepares."""
    predictor = finetune.load(model_path, backend='chainer')
    net = predictor.model
    definition = read_prototxt_param(ALEXNET_DEPLOY)
    for layer in definition.layer:
        if layer.name == 'fc8':
            layer.inner_product_param.num_output = net.n_classes
    weights = {name: [net[name].W.array, net[name].b.array]
               for name in net.layer_names}
    prototxt = definition_text(definition)
    dnn = cv2.dnn.readNetFromCaffe(bytearray(prototxt.encode()),
                                   bytearray(caffemodel_bytes(definition,
                                                              weights)))
    x = np.stack([predictor.preprocess(p) for p in images])
    dnn.setInput(x)
    return dnn.forward('prob').reshape(len(images), -1)


def definition_text(definition):
    from google.protobuf import text_format
    return text_format.MessageToString(definition)


def test_flickr_style_example_then_classify(tmp_path, monkeypatch):
    data = write_style_folder(tmp_path / 'photos')
    pretrained = tmp_path / 'pretrained'
    out = tmp_path / 'result'
    result = subprocess.run(
        [sys.executable, os.path.join(EXAMPLES, 'finetune_flickr_style.py'),
         '--data', str(data), '--out', str(out), '--pretrained-dir',
         str(pretrained), '--random-weights', '--epochs', '1',
         '--batchsize', '4', '--loaderjob', '1'],
        capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-2000:]
    assert 'writing random weights' in result.stderr
    assert (out / 'model_final.npz').exists()
    # converted into the cache, nothing written beside the caffemodel
    assert os.listdir(pretrained) == ['bvlc_alexnet.caffemodel']
    cache = os.path.join(os.environ['FINETUNE_CACHE'], 'converted')
    assert [f for f in os.listdir(cache) if f.endswith('.npz')]
    images = sorted(str(p) for p in (data / 'warm').iterdir())[:2]
    classify = subprocess.run(
        [sys.executable, os.path.join(EXAMPLES, 'classify.py'),
         str(out / 'model_final.npz')] + images,
        capture_output=True, text=True, timeout=300)
    assert classify.returncode == 0, classify.stderr
    lines = classify.stdout.strip().splitlines()
    assert len(lines) == 2
    expected = opencv_probabilities(str(out / 'model_final.npz'), images)
    names = finetune.load(str(out / 'model_final.npz')).class_names
    assert sorted(names) == ['cool', 'warm']
    for line, image, probs in zip(lines, images, expected):
        path, label, prob = line.split('\t')
        assert path == image
        assert label == names[int(probs.argmax())]
        assert abs(float(prob) - probs.max()) < 2e-3  # printed to 3 places
