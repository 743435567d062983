"""Model files that carry their metadata, written atomically.

A model file is a ``.npz`` holding the Chainer parameters (the keys
``chainer.serializers.save_npz`` would write) plus ``__meta__`` (JSON: the
architecture, class names, preprocessing, layer names) and, when the mean is
an image, ``__mean__``. :func:`load_model` rebuilds the network from the
metadata alone, so a checkpoint loads without the code that trained it
knowing its shape.
"""
import json
import zipfile
import zlib

import chainer
import numpy as np

from finetune.common.errors import CheckpointError
from finetune.common.errors import one_line
from finetune.common.fileio import write_npz
from finetune.models import AlexNet
from finetune.models import CaffeGraph
from finetune.models import CaffeNet
from finetune.data.transforms import CaffePreprocess

FORMAT = 'finetune-model'
VERSION = 1
ARCHS = {'alexnet': AlexNet, 'caffenet': CaffeNet}


def build_model(meta, initialW=None):
    """Make the (untrained) network described by ``meta``.

    ``initialW`` as in the models (``chainer.initializers.Zero()`` when the
    weights are loaded next: drawing 61M randoms costs a second).
    """
    arch = meta['arch']
    if arch in ARCHS:
        return ARCHS[arch](n_classes=meta['n_classes'], initialW=initialW)
    if arch == 'caffe':
        return CaffeGraph.from_text(meta['prototxt'], meta['n_classes'],
                                    source='checkpoint', initialW=initialW)
    raise CheckpointError('unknown architecture %r' % arch)


def model_meta(model, class_names, preprocess, **extra):
    """The metadata dict :func:`save_model` stores for ``model``."""
    meta = {'format': FORMAT, 'version': VERSION, 'arch': model.arch,
            'n_classes': int(model.n_classes),
            'class_names': list(class_names),
            'layer_names': list(model.layer_names),
            'preprocess': {'size': list(preprocess.size),
                           'crop_size': preprocess.crop_size,
                           'scale': preprocess.scale,
                           'channels': preprocess.channels}}
    if model.arch == 'caffe':
        meta['prototxt'] = model.definition()
    if len(class_names) != model.n_classes:
        raise ValueError('%d class names for %d outputs'
                         % (len(class_names), model.n_classes))
    meta.update(extra)
    return meta


def save_model(path, model, class_names, preprocess, **extra):
    """Write ``model`` with its metadata to ``path`` (.npz), atomically.

    Args:
        path (str): destination; a crash mid-write leaves the old file.
        model: AlexNet, CaffeNet or CaffeGraph (on CPU or GPU).
        class_names (list of str): one per output.
        preprocess (CaffePreprocess): how inputs were prepared.
        **extra: more JSON-serializable metadata (source file, accuracy).
    """
    meta = model_meta(model, class_names, preprocess, **extra)
    serializer = chainer.serializers.DictionarySerializer()
    serializer.save(model)
    arrays = {}
    for key, value in serializer.target.items():
        value = chainer.backend.CpuDevice().send(value)
        # float32 on disk, also after float16 training
        arrays[key] = value.astype(np.float32) \
            if value.dtype == np.float16 else value
    arrays['__meta__'] = np.array(json.dumps(meta))
    arrays['__mean__'] = np.asarray(preprocess.mean, dtype=np.float32)
    write_npz(path, arrays)


def read_meta(npz, path):
    try:
        meta = json.loads(str(npz['__meta__']))
    except KeyError:
        raise CheckpointError('%s: not a finetune model file (no metadata; '
                              'convert a caffemodel with finetune.convert)'
                              % path) from None
    if meta.get('format') != FORMAT:
        raise CheckpointError('%s: not a finetune model file' % path)
    return meta


def read_model_meta(path):
    """The metadata dict of the model file ``path``, without its weights.

    Raises:
        CheckpointError: missing, truncated or foreign file.
    """
    try:
        with np.load(path, allow_pickle=False) as npz:
            return read_meta(npz, path)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        raise CheckpointError('%s: cannot read model file: %s'
                              % (path, one_line(e))) from None


def load_model(path):
    """Read a model file.

    Returns:
        tuple: (model, meta, preprocess): the network with its weights
        (on CPU), the metadata dict and the :class:`CaffePreprocess`.

    Raises:
        CheckpointError: missing, truncated or foreign file, or weights that
            do not fit the architecture its metadata names.
    """
    try:
        npz = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        raise CheckpointError('%s: cannot read model file: %s'
                              % (path, one_line(e))) from None
    if not hasattr(npz, 'files'):
        raise CheckpointError('%s: not a finetune model file (a bare '
                              'array)' % path)
    with npz:
        meta = read_meta(npz, path)
        model = build_model(meta, chainer.initializers.Zero())
        try:
            chainer.serializers.NpzDeserializer(npz, strict=True).load(model)
        except (KeyError, ValueError) as e:
            raise CheckpointError('%s: weights do not fit %s: %s'
                                  % (path, meta['arch'], e)) from None
        except (zipfile.BadZipFile, EOFError, OSError, zlib.error) as e:
            raise CheckpointError('%s: cannot read model file: %s'
                                  % (path, one_line(e))) from None
        prep = meta['preprocess']
        preprocess = CaffePreprocess(
            size=prep['size'], crop_size=prep['crop_size'],
            mean=npz['__mean__'], scale=prep['scale'],
            channels=prep['channels'])
    return model, meta, preprocess
