"""The small random-weight graph nets of tests/assets/caffe (ResNet,
inception, SqueezeNet) as model files, how each is fine-tuned, and the
photos they are fine-tuned on. The fixtures are imported by the test
modules that use them."""
import dataclasses
import os

import numpy as np
import pytest

import finetune
from finetune.data.folder import read_image_list
from finetune.weights.conversion import ConversionOptions
from finetune.weights.conversion import convert_caffemodel
from tests.support.photos import write_style_folder


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
    listed, _ = read_image_list(os.path.join(str(out), '%s.txt' % split),
                                str(photos))
    return ([os.path.join(str(photos), p) for p, _ in listed],
            np.array([label for _, label in listed]))
