"""Model files that carry their metadata, written atomically.

A model file is a ``.npz`` holding the Chainer parameters (the keys
``chainer.serializers.save_npz`` would write) plus ``__meta__`` (JSON: the
architecture, class names, preprocessing, layer names) and, when the mean is
an image, ``__mean__``. :func:`load_model` rebuilds the network from the
metadata alone, so a checkpoint loads without the code that trained it
knowing its shape.
"""
import json
import math
import os
import zipfile

import chainer
import numpy as np

from finetune.caffe.caffemodel import parse_net_text
from finetune.caffe.caffemodel import upgrade_v1_net
from finetune.common.errors import CaffeModelError
from finetune.common.errors import CheckpointError
from finetune.common.fileio import write_npz
from finetune.common.npz import NpzReader
from finetune.common.npz import parse_json
from finetune.common.npz import shown
from finetune.models import AlexNet
from finetune.models import CaffeGraph
from finetune.models import CaffeNet
from finetune.data.transforms import CaffePreprocess

FORMAT = 'finetune-model'
VERSION = 1
#: The ``arch`` of every model file written now: a CaffeGraph with its
#: deploy prototxt stored in the metadata.
ARCH = CaffeGraph.arch
#: ``arch`` values of older files: 'caffe' (a CaffeGraph, prototxt stored
#: as now) and BVLC AlexNet/CaffeNet, stored without a prototxt and rebuilt
#: from the shipped ones.
OLD_BVLC_ARCHS = {'alexnet': AlexNet, 'caffenet': CaffeNet}
ARCHS = (ARCH, 'caffe') + tuple(OLD_BVLC_ARCHS)


def build_model(meta, initialW=None, source='checkpoint'):
    """Make the (untrained) network described by ``meta``.

    ``initialW`` as in the models (``chainer.initializers.Zero()`` when the
    weights are loaded next: drawing 61M randoms costs a second);
    ``source`` names the stored prototxt in errors.
    """
    arch = meta['arch']
    if arch in OLD_BVLC_ARCHS:
        return OLD_BVLC_ARCHS[arch](n_classes=meta['n_classes'],
                                    initialW=initialW)
    if arch in ARCHS:
        return CaffeGraph.from_text(meta['prototxt'], meta['n_classes'],
                                    source=source, initialW=initialW)
    raise CheckpointError('unknown architecture %r' % arch)


def model_meta(model, class_names, preprocess, **extra):
    """The metadata dict :func:`save_model` stores for ``model``."""
    meta = {'format': FORMAT, 'version': VERSION, 'arch': ARCH,
            'n_classes': int(model.n_classes),
            'class_names': list(class_names),
            'layer_names': list(model.layer_names),
            'preprocess': {'size': list(preprocess.size),
                           'crop_size': preprocess.crop_size,
                           'scale': preprocess.scale,
                           'channels': preprocess.channels},
            'prototxt': model.definition()}
    if len(class_names) != model.n_classes:
        raise ValueError('%d class names for %d outputs'
                         % (len(class_names), model.n_classes))
    meta.update(extra)
    return meta


def save_model(path, model, class_names, preprocess, **extra):
    """Write ``model`` with its metadata to ``path`` (.npz), atomically.

    Args:
        path (str): destination; a crash mid-write leaves the old file.
        model: a CaffeGraph (AlexNet, CaffeNet...; on CPU or GPU).
        class_names (list of str): one per output.
        preprocess (CaffePreprocess): how inputs were prepared.
        **extra: more JSON-serializable metadata (source file, accuracy).

    Raises:
        CheckpointError: metadata :func:`check_meta` refuses (an image
            size past MAX_SIDE, a class name of two lines), naming ``path``.
    """
    meta = model_meta(model, class_names, preprocess, **extra)
    check_meta(meta, path)  # nothing is written that load_model refuses
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


#: Bounds of the metadata schema (see :func:`check_meta`).
MAX_CLASSES = 100000
MAX_NAME_CHARS = 1000
MAX_SIDE = 4096
MAX_PROTOTXT_CHARS = 1 << 22
#: Weights of one model file in all (VGG-19, the largest classic
#: classifier, has 575 MB).
MAX_MODEL_BYTES = 2 << 30
#: Caffe's files, by suffix: what the model file refusal calls them.
CAFFE_SUFFIXES = {'.caffemodel': 'caffemodel', '.prototxt': 'prototxt',
                  '.binaryproto': 'Caffe mean file'}
META, MEAN = '__meta__', '__mean__'


def _brief(value):
    """``repr(value)``, cut to 60 characters (a crafted field may be
    long)."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + '...'


def _is_int(value):
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _one_line_text(value):
    return isinstance(value, str) and 0 < len(value) <= MAX_NAME_CHARS \
        and value.splitlines() == [value] and value.isprintable()


def _meta_errors(meta):
    """What is wrong with the metadata dict ``meta``, first problem first
    (a generator of short phrases naming the field)."""
    if not isinstance(meta, dict):
        yield 'is not a JSON object'
        return
    if meta.get('format') != FORMAT:
        yield 'format is %s, not %r' % (_brief(meta.get('format')), FORMAT)
    if meta.get('version') != VERSION or not _is_int(meta.get('version')):
        yield 'version %s is not %d' % (_brief(meta.get('version')), VERSION)
    arch = meta.get('arch')
    if arch not in ARCHS:
        yield 'arch %s is not one of %s' % (_brief(arch), ', '.join(ARCHS))
    n = meta.get('n_classes')
    if not _is_int(n) or not 1 <= n <= MAX_CLASSES:
        yield 'n_classes %s is not an integer in 1..%d' % (_brief(n),
                                                            MAX_CLASSES)
    names = meta.get('class_names')
    if not isinstance(names, list) or not all(map(_one_line_text, names)):
        yield 'class_names is not a list of one-line, printable, non-empty ' \
            'names of at most %d characters' % MAX_NAME_CHARS
    elif _is_int(n) and len(names) != n:
        yield '%d class_names for n_classes %d' % (len(names), n)
    layers = meta.get('layer_names', [])
    if not isinstance(layers, list) or \
            not all(isinstance(name, str) for name in layers):
        yield 'layer_names is not a list of names'
    if arch in ARCHS and arch not in OLD_BVLC_ARCHS:
        text = meta.get('prototxt')
        if not isinstance(text, str) or not 0 < len(text) <= \
                MAX_PROTOTXT_CHARS:
            yield 'prototxt is not a text of 1..%d characters' \
                % MAX_PROTOTXT_CHARS
    yield from _preprocess_errors(meta.get('preprocess'))


def _preprocess_errors(prep):
    if not isinstance(prep, dict):
        yield 'preprocess is not a JSON object'
        return
    size = prep.get('size')
    if not isinstance(size, list) or len(size) != 2 or not all(
            _is_int(side) and 1 <= side <= MAX_SIDE for side in size):
        yield 'preprocess size %s is not [height, width] in 1..%d' % (
            _brief(size), MAX_SIDE)
        size = None
    crop = prep.get('crop_size')
    if crop is not None and (not _is_int(crop) or crop < 1 or (
            size is not None and crop > min(size))):
        yield 'preprocess crop_size %s is not null or an integer in ' \
            '1..min(size)' % _brief(crop)
    scale = prep.get('scale')
    if not _is_number(scale) or not math.isfinite(scale) or scale <= 0:
        yield 'preprocess scale %s is not a finite number > 0' % _brief(scale)
    if prep.get('channels') not in (1, 3) or \
            not _is_int(prep.get('channels')):
        yield 'preprocess channels %s is not 1 or 3' % _brief(
            prep.get('channels'))


def check_meta(meta, label):
    """Refuse metadata that does not follow the schema: every field's type,
    allowed values and bounds (``n_classes`` in 1..MAX_CLASSES and as many
    one-line ``class_names``; ``arch`` a known one; ``prototxt`` bounded
    text; ``preprocess`` size in 1..MAX_SIDE, crop <= size, finite scale >
    0, 1 or 3 channels). Nothing is built before this passes.

    Raises:
        CheckpointError: the first problem, naming ``label`` (the file).
    """
    for problem in _meta_errors(meta):
        raise CheckpointError('%s: metadata %s: %s' % (label, META, problem))


def read_meta(npz, path):
    """The checked metadata dict of the open :class:`NpzReader` ``npz``.

    Raises:
        CheckpointError: no ``__meta__``, not bounded JSON text, or
            metadata outside the schema (see :func:`check_meta`).
    """
    if META not in npz:
        raise CheckpointError('%s: not a finetune model file (no metadata; '
                              'convert a caffemodel with finetune.convert)'
                              % path)
    if npz.header(META).dtype.kind != 'U':
        raise npz.error(META, 'is not JSON text')
    meta = parse_json(str(npz[META]), '%s: member %s' % (path, META))
    if isinstance(meta, dict) and meta.get('format') != FORMAT:
        raise CheckpointError('%s: not a finetune model file' % path)
    check_meta(meta, path)
    return meta


def open_model_file(path):
    """An :class:`NpzReader` of the model file ``path`` (headers checked).

    Raises:
        CheckpointError: missing or unreadable, a caffemodel or prototxt
            (to convert first), or not a safe .npz (see NpzReader).
    """
    suffix = os.path.splitext(path)[1].lower()
    if suffix in CAFFE_SUFFIXES and not zipfile.is_zipfile(path):
        raise CheckpointError('%s: a %s, not a finetune model file; convert '
                              'the caffemodel first: python -m '
                              'finetune.convert' % (path, CAFFE_SUFFIXES[
                                  suffix]))
    if not os.path.exists(path):
        raise CheckpointError('%s: no such model file' % path)
    return NpzReader(path, max_bytes=MAX_MODEL_BYTES, finite=True,
                     kind='model file (the .npz finetune.train or '
                     'finetune.convert writes)')


def read_model_meta(path):
    """The metadata dict of the model file ``path``, without its weights.

    Raises:
        CheckpointError: missing, truncated or foreign file, or metadata
            outside the schema.
    """
    with open_model_file(path) as npz:
        return read_meta(npz, path)


def _declared_rows(meta, path):
    """{layer: num_output} of the Convolution and InnerProduct layers the
    metadata declares (read without building anything): every such layer
    of the stored prototxt; ``fc8`` for older AlexNet and CaffeNet files,
    which store none."""
    if meta['arch'] in OLD_BVLC_ARCHS:
        return {'fc8': meta['n_classes']}
    net = upgrade_v1_net(parse_net_text(meta['prototxt'],
                                        '%s: stored prototxt' % path))
    rows = {}
    for layer in net.layer:
        if layer.type == 'InnerProduct':
            rows[layer.name] = layer.inner_product_param.num_output
        elif layer.type == 'Convolution':
            rows[layer.name] = layer.convolution_param.num_output
    return rows


def check_declared_shapes(npz, meta, path):
    """Before anything is built: each weighted layer's ``W`` member exists
    with as many rows as the metadata gives it outputs, and the output
    layer's as many as ``n_classes``, so a crafted ``num_output`` or
    ``n_classes`` is refused before the network it describes is
    allocated.

    Raises:
        CheckpointError: naming the layer and both sizes.
    """
    rows = _declared_rows(meta, path)
    for layer, outputs in rows.items():
        name = layer + '/W'
        if name not in npz:
            raise CheckpointError('%s: no member %s for the layer %s of its '
                                  'metadata' % (path, shown(name),
                                                shown(layer)))
        shape = npz.header(name).shape
        if not shape or shape[0] != outputs:
            raise npz.error(name, 'shape %s, but the metadata gives %s %d '
                            'outputs' % (shape, shown(layer), outputs))
    if meta['n_classes'] not in {npz.header(layer + '/W').shape[0]
                                 for layer in rows}:
        raise CheckpointError('%s: no layer has n_classes %d outputs'
                              % (path, meta['n_classes']))


class StoredShapes(chainer.initializer.Initializer):
    """Zero initializer of the Convolution/InnerProduct weights of a network
    built to load a model file: each array it is given must have the shape
    of a ``W`` member not yet used, or it is refused before it is filled.
    NumPy only reserves (does not touch) an array's memory before this, so
    a stored prototxt whose layers are larger than its weights (a huge
    input, a large pad) costs no memory; the network's weights are at most
    what the file declares (itself bounded).

    Raises:
        CheckpointError: naming the file and the shape no member has.
    """

    def __init__(self, npz, path):
        super().__init__()
        self.npz = npz
        self.path = path
        self.unused = sorted(name for name in npz if name.endswith('/W'))

    def __call__(self, array):
        shape = tuple(array.shape)
        same = [name for name in self.unused
                if self.npz.header(name).shape == shape]
        if not same:
            rows = [name for name in self.unused
                    if self.npz.header(name).shape[:1] == shape[:1]]
            if len(rows) == 1:  # the layer of these outputs
                raise self.npz.error(rows[0], 'shape %s, but its network '
                                     'has a %s weight there' % (
                                         self.npz.header(rows[0]).shape,
                                         shape))
            raise CheckpointError('%s: its network has a %s weight that no '
                                  'W member holds' % (self.path, shape))
        self.unused.remove(same[0])
        array[...] = 0


def check_members(npz, model, path):
    """The members (``__meta__``/``__mean__`` aside) are exactly the
    parameters and persistents of ``model``, each of its shape and dtype
    (float32: model files are always written so); read no data.

    Raises:
        CheckpointError: a missing, extra or misshapen member.
    """
    serializer = chainer.serializers.DictionarySerializer()
    serializer.save(model)
    expected = serializer.target
    stored = set(npz) - {META, MEAN}
    missing, extra = sorted(set(expected) - stored), \
        sorted(stored - set(expected))
    if missing or extra:
        raise CheckpointError('%s: weights do not fit %s: %s' % (
            path, model.arch, '; '.join(
                part for part in ('missing ' + ', '.join(missing[:5])
                                  if missing else '', 'unexpected ' +
                                  ', '.join(map(shown, extra[:5]))
                                  if extra else '') if part)))
    for name, value in expected.items():
        header = npz.header(name)
        value = np.asarray(value)
        if header.shape != value.shape or \
                header.dtype.newbyteorder('=') != value.dtype:
            raise npz.error(name, '%s %s does not fit %s (%s %s)' % (
                header.dtype.str, header.shape, model.arch, value.dtype,
                value.shape))


def read_mean(npz, channels):
    """``__mean__``: float (C,) or (C, H, W), H, W in 1..MAX_SIDE, C the
    metadata's channels, finite."""
    if MEAN not in npz:
        raise CheckpointError('%s: no member %s (the mean)' % (npz.label,
                                                               MEAN))
    header = npz.header(MEAN)
    shape = header.shape
    if header.dtype.kind != 'f' or len(shape) not in (1, 3) or \
            shape[0] != channels or not all(1 <= side <= MAX_SIDE
                                            for side in shape[1:]):
        raise npz.error(MEAN, '%s %s is not a float (%d,) or (%d, H, W) '
                        'mean, H and W in 1..%d' % (
                            header.dtype.str, shape, channels, channels,
                            MAX_SIDE))
    return npz[MEAN]


def load_model(path):
    """Read a model file, checking before each step what it may allocate:
    the headers (NpzReader), the metadata (:func:`check_meta`), the
    declared layer sizes (:func:`check_declared_shapes`), then the built
    network's members (:func:`check_members`); weights and mean must be
    finite.

    Returns:
        tuple: (model, meta, preprocess): the network with its weights
        (on CPU), the metadata dict and the :class:`CaffePreprocess`.

    Raises:
        CheckpointError: missing, truncated or foreign file (a caffemodel
            says to convert it), metadata outside the schema, or weights
            that do not fit the architecture its metadata names, or hold
            NaN or infinity (one line naming the file and member).
    """
    with open_model_file(path) as npz:
        meta = read_meta(npz, path)
        prep = meta['preprocess']
        mean = read_mean(npz, prep['channels'])
        try:
            check_declared_shapes(npz, meta, path)
            model = build_model(meta, StoredShapes(npz, path),
                                '%s: stored prototxt' % path)
        except CaffeModelError as e:  # a file's prototxt: the file's fault
            raise CheckpointError(str(e)) from None
        except MemoryError:  # NumPy refused even to reserve a weight
            raise CheckpointError(
                '%s: its metadata describes a network far larger than its '
                'weights' % path) from None
        if list(meta.get('layer_names', model.layer_names)) != \
                list(model.layer_names):
            raise CheckpointError('%s: metadata layer_names do not match '
                                  'the layers of its network' % path)
        check_members(npz, model, path)
        chainer.serializers.NpzDeserializer(npz, strict=True).load(model)
    preprocess = CaffePreprocess(
        size=prep['size'], crop_size=prep['crop_size'], mean=mean,
        scale=prep['scale'], channels=prep['channels'])
    return model, meta, preprocess
