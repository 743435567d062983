"""The training pipeline on graph nets: the small random-weight ResNet,
inception and SqueezeNet nets of tests/assets/caffe (``small_nets``).

Each feature is run through ``finetune.fit`` on every shape and checked
against an expectation computed here: OpenCV's own Caffe importer on the
caffemodel.
"""
import dataclasses
import os

import cv2
import numpy as np
import pytest

import finetune
from finetune.caffe.conversion import ConversionOptions
from finetune.caffe.conversion import convert_caffemodel
from finetune.data.feature_cache import crop_windows
from finetune.data.folder import read_label_file
from finetune.models.model_file import load_model
from finetune.models.model_file import save_model
from tests.conftest import write_style_folder


@dataclasses.dataclass(frozen=True)
class Shape:
    """How each net is fine-tuned here.

    Attributes:
        resize (int): images are resized to this square and cropped to the
            net's input (random crops in training).
        head (str): the classifier, replaced by a 2-class one.
        trunk (str): a deep ``--freeze`` (the feature cache, the report):
            its frozen part holds the net's Eltwise or Concat.
        cut_layer (str): the OpenCV layer whose output crosses the cut
            after ``trunk``.
        probe (tuple): (layer, array) inside ``trunk`` that is changed to
            check that the cache follows the frozen weights.
        shallow (str): a ``--freeze`` that leaves the net's BatchNorm,
            Scale, Eltwise, Concat and Dropout layers to train.
        lr (float): a learning rate that trains it in a few steps (about
            what ``--lr-find`` suggests).
    """
    resize: int
    head: str
    trunk: str
    cut_layer: str
    probe: tuple
    shallow: str
    lr: float


SHAPES = {
    'resnet_small': Shape(40, 'fc5', 'up-to:res2a', 'res2a_relu',
                          ('bn_conv1', 'mean'), 'up-to:pool1', 0.01),
    'inception_small': Shape(34, 'loss3/classifier',
                             'up-to:inception_3a/output', 'pool5/drop',
                             ('inception_3a/5x5', 'b'), 'up-to:pool1/norm1',
                             0.01),
    'squeeze_small': Shape(40, 'conv10', 'up-to:fire3/concat', 'drop9',
                           ('fire3/expand3x3', 'b'), 'up-to:pool1', 0.04),
}
NETS = sorted(SHAPES)
MEAN = np.array([128, 128, 128], np.float32)
SCALE = 1 / 64  # random weights: inputs near unit scale


@pytest.fixture(scope='module')
def photos(tmp_path_factory):
    """Warm and cool photos, 8 of each: 12 train and 4 validation images
    with --val-split 0.25."""
    return write_style_folder(tmp_path_factory.mktemp('graph') / 'photos',
                              n_per_class=8)


@pytest.fixture(scope='module')
def graph_nets(small_nets, tmp_path_factory):
    """name -> model file of the random-weight net (resized, cropped,
    mean 128, scale 1/64), with its caffemodel files."""
    directory = tmp_path_factory.mktemp('graph_nets')
    nets = {}
    for name in NETS:
        files = small_nets[name]
        path = str(directory / (name + '.npz'))
        side = SHAPES[name].resize
        convert_caffemodel(files['caffemodel'], path, ConversionOptions(
            prototxt=files['prototxt'], resize=(side, side), mean=MEAN,
            scale=SCALE))
        nets[name] = dict(files, model=path)
    return nets


def config(name, graph_nets, photos, out, **options):
    """TrainConfig of a short run on ``photos``."""
    settings = dict(data=str(photos), pretrained=graph_nets[name]['model'],
                    replace=SHAPES[name].head, epochs=2, batchsize=4,
                    val_split=0.25, loaderjob=0, lr=SHAPES[name].lr,
                    log_interval=0, out=str(out))
    settings.update(options)
    return finetune.TrainConfig(**settings)


def entries(out, photos, split='train'):
    """(paths, labels) of the run's train.txt or val.txt."""
    listed, _ = read_label_file(os.path.join(str(out), '%s.txt' % split),
                                str(photos))
    return ([os.path.join(str(photos), p) for p, _ in listed],
            np.array([label for _, label in listed]))


def opencv_forward(files, layer, x):
    """OpenCV's Caffe importer on the caffemodel, up to ``layer``."""
    net = cv2.dnn.readNetFromCaffe(files['prototxt'], files['caffemodel'])
    net.setInput(np.ascontiguousarray(x))
    return net.forward(layer)


def relative_error(actual, expected):
    return np.abs(actual - expected).max() / np.abs(expected).max()


def cache_file(out, split):
    folder = os.path.join(str(out), 'feature_cache')
    found = [f for f in os.listdir(folder) if f.startswith(split + '-')]
    assert len(found) == 1, found
    return os.path.join(folder, found[0])


@pytest.mark.parametrize('name', NETS)
def test_feature_cache_holds_the_frozen_trunk_of_each_crop(
        name, graph_nets, photos, tmp_path, capsys):
    """--cache-features --cache-crops 3 with the net's Eltwise/Concat
    frozen: each cached crop is what OpenCV computes from the caffemodel
    up to the cut; a second run reuses the cache and a run whose frozen
    weights differ (a BatchNorm mean in the ResNet) rebuilds it."""
    shape, files = SHAPES[name], graph_nets[name]
    out = tmp_path / 'out'
    options = dict(freeze=shape.trunk, cache_features=True, cache_crops=3)
    finetune.fit(config(name, graph_nets, photos, out, **options))
    assert capsys.readouterr().err.count('features: cached in') == 2
    train = np.load(cache_file(out, 'train'))
    paths, _ = entries(out, photos)
    _, _, prep = load_model(files['model'])
    crops = np.stack([
        prep.crop(prep.image_array(path), window=window)
        for i, path in enumerate(paths)
        for window in crop_windows(prep, i, 'random', 3)])
    assert len({w for i in range(len(paths))
                for w in crop_windows(prep, i, 'random', 3)}) > 3
    expected = opencv_forward(files, shape.cut_layer, crops)
    assert train.shape == (len(paths), 3) + expected.shape[1:]
    assert relative_error(train.reshape(expected.shape), expected) < 1e-5
    val = np.load(cache_file(out, 'val'))
    val_paths, _ = entries(out, photos, 'val')
    centre = opencv_forward(files, shape.cut_layer,
                            np.stack([prep(p) for p in val_paths]))
    assert relative_error(val[:, 0], centre) < 1e-5

    finetune.fit(config(name, graph_nets, photos, out, overwrite=True,
                        **options))
    assert capsys.readouterr().err.count('features: reusing') == 2

    # the same net but for one frozen array: the cache is rebuilt
    net, meta, prep = load_model(files['model'])
    layer, attribute = shape.probe
    probe = getattr(net[layer], attribute)
    getattr(probe, 'array', probe)[...] += 0.5
    other = str(tmp_path / 'other.npz')
    save_model(other, net, meta['class_names'], prep)
    finetune.fit(config(name, graph_nets, photos, out, overwrite=True,
                        pretrained=other, **options))
    assert capsys.readouterr().err.count('features: cached in') == 2
    assert not np.allclose(np.load(cache_file(out, 'train')), train)
