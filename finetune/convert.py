"""Convert a caffemodel into a finetune model file (.npz) beside it.

    python -m finetune.convert pretrained/bvlc_alexnet.caffemodel

writes ``pretrained/bvlc_alexnet.npz`` with the weights, the class names,
the mean and the crop size. Without ``--prototxt`` the file must hold an
AlexNet or CaffeNet (told apart by the order of their pool and norm
layers); with it, any net of the supported layer types converts.
Several processes may convert the same file at once (e.g. training ranks
starting together): a file lock lets one convert while the others wait and
then reuse its result.
"""
import argparse
import sys
import contextlib
import fcntl
import os

import chainer
import numpy as np

from finetune.caffe.caffemodel import read_caffemodel
from finetune.caffe.importer import import_caffemodel
from finetune.models.model_file import save_model
from finetune.data.folder import read_class_names
from finetune.common.cli import command
from finetune.common.errors import CaffeModelError
from finetune.models import AlexNet
from finetune.models import CaffeGraph
from finetune.models import CaffeNet
from finetune.data.resources import imagenet_class_names
from finetune.data.resources import imagenet_mean
from finetune.data.transforms import CaffePreprocess


def detect_alexnet(net, source):
    """Return AlexNet or CaffeNet for a caffemodel in BVLC's layout."""
    names = [layer.name for layer in net.layers]
    if not {'conv1', 'fc8', 'pool1', 'norm1'} <= set(names):
        raise CaffeModelError(
            '%s: not an AlexNet/CaffeNet layout (layers: %s); pass '
            '--prototxt with its deploy definition' % (source,
                                                       ', '.join(names)))
    if names.index('pool1') < names.index('norm1'):
        return CaffeNet
    return AlexNet


def caffemodel_to_model(caffemodel, prototxt=None):
    """Read ``caffemodel`` and return the network with its weights."""
    net = read_caffemodel(caffemodel)
    zero = chainer.initializers.Zero()  # the weights are loaded next
    if prototxt:
        model = CaffeGraph.from_prototxt(prototxt, initialW=zero)
    else:
        fc8 = net.layer('fc8')
        n_classes = fc8.blobs[0].shape[-2] if fc8 and fc8.blobs else 1000
        model = detect_alexnet(net, caffemodel)(n_classes=n_classes,
                                                initialW=zero)
    model.cleargrads()  # Chainer allocates NaN grads: free them before the
    import_caffemodel(model, net, source=caffemodel)  # weights are paged in
    return model


def default_preprocess(model, mean=None, scale=1.0, resize=None):
    """Caffe's preprocessing for ``model``: AlexNet's, or the deploy input's.

    AlexNet/CaffeNet: resize 256x256, ImageNet mean image, crop 227. A
    prototxt net: resize to its declared input size, no mean, no crop.
    ``resize`` (H, W) larger than the input instead resizes to that and
    takes random (training) or center (evaluation) crops of the input's
    side, as Caffe's ``transform_param { crop_size }`` does.

    Raises:
        CaffeModelError: ``resize`` smaller than the input, or crops asked
            of a net with a non-square input.
    """
    if model.arch in ('alexnet', 'caffenet'):
        channels, height, width = 3, 227, 227
        size, crop = (256, 256), 227
        mean = imagenet_mean() if mean is None else mean
    else:
        channels, height, width = model.net_input_shape
        size, crop = (height, width), None
    if resize is not None and tuple(resize) != size:
        if height != width or min(resize) < height:
            raise CaffeModelError(
                '--resize %dx%d: crops must be square and fit in it; the '
                'net takes %dx%d' % (tuple(resize) + (height, width)))
        size, crop = tuple(resize), height
    return CaffePreprocess(size, crop, mean, scale, channels)


def strip_label_ids(names):
    """Drop a leading integer or WordNet id from Caffe label lines
    (``0 zero``, ``n01440764 tench, Tinca tinca``)."""
    stripped = []
    for line in names:
        head, _, rest = line.partition(' ')
        is_id = head.isdigit() or (head[:1] == 'n' and head[1:].isdigit())
        stripped.append(rest.strip() if is_id and rest.strip() else line)
    return stripped


def convert_caffemodel(caffemodel, out=None, prototxt=None, labels=None,
                       mean=None, scale=1.0, resize=None):
    """Convert ``caffemodel`` to a model file; returns its path.

    Args:
        caffemodel (str): V1 or V2 binary caffemodel.
        out (str): destination (default: the caffemodel's path with .npz).
        prototxt (str): deploy definition for nets other than AlexNet.
        labels (str): class-name file; default ImageNet's 1,000 names
            when the net has 1,000 outputs, else ``class0, class1...``.
        mean: mean image/pixel override (see CaffePreprocess).
        scale (float): input multiplier after mean subtraction.
        resize (tuple): (H, W) images are resized to before cropping
            (see :func:`default_preprocess`).
    """
    out = out or os.path.splitext(caffemodel)[0] + '.npz'
    model = caffemodel_to_model(caffemodel, prototxt)
    if labels:
        names = strip_label_ids(read_class_names(labels))
    elif model.n_classes == 1000:
        names = imagenet_class_names()
    else:
        names = ['class%d' % i for i in range(model.n_classes)]
    if len(names) != model.n_classes:
        raise CaffeModelError('%s: %d class names for a net with %d outputs'
                              % (labels, len(names), model.n_classes))
    stat = os.stat(caffemodel)
    save_model(out, model, names, default_preprocess(model, mean, scale, resize),
               source=os.path.basename(caffemodel),
               source_size=stat.st_size, source_mtime=stat.st_mtime)
    return out


@contextlib.contextmanager
def file_lock(path):
    """Hold an exclusive lock on ``path`` (created if missing)."""
    with open(path, 'a') as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def is_up_to_date(out, caffemodel):
    """True when ``out`` exists and is at least as new as ``caffemodel``."""
    return (os.path.exists(out) and
            os.path.getmtime(out) >= os.path.getmtime(caffemodel))


def ensure_converted(caffemodel, out=None, force=False, **kwargs):
    """Convert once, safely across processes; later calls reuse the file.

    ``force`` converts even when ``out`` is newer than ``caffemodel``.

    Returns:
        tuple: (path of the .npz, True if this call converted it).
    """
    out = out or os.path.splitext(caffemodel)[0] + '.npz'
    if not os.path.exists(caffemodel):
        raise CaffeModelError('%s: no such caffemodel' % caffemodel)
    with file_lock(out + '.lock'):
        if not force and is_up_to_date(out, caffemodel):
            return out, False
        return convert_caffemodel(caffemodel, out, **kwargs), True


def parse_mean(text):
    """``--mean``: 'imagenet', 'none', an .npy file or 'B,G,R' numbers."""
    if text is None or text == 'imagenet':
        return None
    if text == 'none':
        return np.zeros(1, np.float32)
    if text.endswith('.npy'):
        return np.load(text)
    return np.array([float(v) for v in text.split(',')], np.float32)


def parse_size(text):
    """``--resize``: 'H,W' or one number for both."""
    sides = [int(v) for v in text.split(',')]
    if len(sides) == 1:
        sides *= 2
    if len(sides) != 2 or min(sides) < 1:
        raise argparse.ArgumentTypeError('expected H,W, got %r' % text)
    return tuple(sides)


@command
def main(argv=None):
    parser = argparse.ArgumentParser(
        prog='python -m finetune.convert', description=__doc__.split('\n')[0])
    parser.add_argument('caffemodel')
    parser.add_argument('--out', help='default: beside the caffemodel')
    parser.add_argument('--prototxt', help='deploy definition (non-AlexNet)')
    parser.add_argument('--labels', help='class names, one per line')
    parser.add_argument('--mean', help="'imagenet' (AlexNet default), "
                        "'none', an .npy image or 'B,G,R'")
    parser.add_argument('--scale', type=float, default=1.0)
    parser.add_argument('--resize', type=parse_size, metavar='H,W',
                        help='resize images to H,W and take crops of the '
                        "net's input size (random ones in training); "
                        'default: resize to the input, no crop (AlexNet: '
                        '256,256 and 227 crops)')
    parser.add_argument('--force', action='store_true',
                        help='convert even if the .npz is up to date')
    args = parser.parse_args(argv)
    kwargs = dict(prototxt=args.prototxt, labels=args.labels,
                  mean=parse_mean(args.mean), scale=args.scale,
                  resize=args.resize)
    out, converted = ensure_converted(args.caffemodel, args.out, args.force,
                                      **kwargs)
    print('%s %s' % ('wrote' if converted else 'up to date:', out))


if __name__ == '__main__':
    sys.exit(main())
