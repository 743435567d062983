"""Caffemodel -> finetune model file (.npz), converted once and reused.

:func:`ensure_converted` is what ``finetune.convert`` and
``finetune.train --pretrained`` call. The source is a registry name
(:mod:`finetune.weights.registry`: its prototxt, class names and
preprocessing come with it) or a caffemodel path (an AlexNet/CaffeNet is
recognised by its layers; other nets need a deploy prototxt). The model
file records the options and the source's size and modification time it
was made from, so a later call with other options, or after the
caffemodel changed, converts again instead of reusing a stale file.
Several processes may convert the same source at once (training ranks
starting together): an exclusive lock on the caffemodel itself (opened
read-only, so no lock file is left anywhere) lets one convert while the
others wait and then reuse its result.
"""
import contextlib
import dataclasses
import fcntl
import hashlib
import math
import os
import re
import stat
from typing import Optional, Tuple

import numpy as np

from finetune.caffe.caffemodel import read_caffemodel
from finetune.caffe.importer import Unset
from finetune.caffe.importer import bind_caffemodel
from finetune.caffe.importer import listed
from finetune.common.errors import CaffeModelError
from finetune.common.errors import CheckpointError
from finetune.common.errors import one_line
from finetune.common.fileio import refuse_overwriting_inputs
from finetune.common.fileio import sha1_of_file
from finetune.data.folder import read_class_names
from finetune.data.resources import imagenet_class_names
from finetune.data.resources import imagenet_mean
from finetune.data.transforms import CaffePreprocess
from finetune.models import AlexNet
from finetune.models import CaffeGraph
from finetune.models import CaffeNet
from finetune.models.model_file import MAX_SIDE
from finetune.models.model_file import read_model_meta
from finetune.models.model_file import save_model
from finetune.weights.cache import converted_path
from finetune.weights.registry import REGISTRY
from finetune.weights.registry import class_names_of
from finetune.weights.registry import registry_entry_for


#: Most values a ``--mean`` .npy may hold (a 3x256x256 image holds 196,608).
MAX_MEAN_ELEMENTS = 16 * 2 ** 20


@dataclasses.dataclass(frozen=True)
class ConversionOptions:
    """How a caffemodel becomes a model file; ``None`` means the default
    (the registry entry's, else AlexNet's or the deploy input's).

    Attributes:
        prototxt (str): deploy definition for nets other than AlexNet.
        labels (str): class-name file (Caffe's ``0 name`` or
            ``n01440764 name`` lines are accepted).
        mean (numpy.ndarray): mean image (C, H, W) or pixel (C,), 0-255.
        scale (float): input multiplier after mean subtraction.
        resize (tuple): (H, W) images are resized to before cropping.
    """
    prototxt: Optional[str] = None
    labels: Optional[str] = None
    mean: Optional[np.ndarray] = None
    scale: Optional[float] = None
    resize: Optional[Tuple[int, int]] = None

    def __post_init__(self):
        """Refuse values no conversion can use (CaffeModelError naming the
        option): a scale that is not a finite number > 0, a mean holding
        NaN or infinity, a resize that is not two integers in 1..MAX_SIDE
        (what a model file may hold)."""
        if self.scale is not None and not (
                isinstance(self.scale, (int, float, np.number)) and
                math.isfinite(self.scale) and self.scale > 0):
            raise CaffeModelError('--scale %r: the input multiplier must be '
                                  'a finite number > 0' % (self.scale,))
        if self.mean is not None and np.ndim(self.mean) not in (1, 3):
            raise CaffeModelError('--mean: a mean pixel (C,) or image '
                                  '(C, H, W), not of shape %s'
                                  % (np.shape(self.mean),))
        if self.mean is not None and not np.isfinite(
                np.asarray(self.mean, np.float64)).all():
            raise CaffeModelError('--mean: the mean holds NaN or infinity')
        if self.resize is not None and (
                len(self.resize) != 2 or not all(
                    isinstance(side, (int, np.integer)) and
                    1 <= side <= MAX_SIDE for side in self.resize)):
            raise CaffeModelError('--resize %r: expected two integers in '
                                  '1..%d (H, W)' % (self.resize, MAX_SIDE))


def resolve_source(source, pretrained_dir=None):
    """(caffemodel path, registry entry or None) for a name or a path;
    ``pretrained_dir``: where registry weights were fetched to (default
    the cache's)."""
    if source in REGISTRY:
        entry = REGISTRY[source]
        return entry.local_path(pretrained_dir), entry
    return source, registry_entry_for(source)


def detect_alexnet(net, source):
    """Return the constructor (AlexNet or CaffeNet) of a caffemodel in
    BVLC's layout."""
    names = [layer.name for layer in net.layers]
    if not {'conv1', 'fc8', 'pool1', 'norm1'} <= set(names):
        raise CaffeModelError(
            '%s: not an AlexNet/CaffeNet layout (layers: %s); pass '
            '--prototxt with its deploy definition' % (source,
                                                       listed(names)))
    if names.index('pool1') < names.index('norm1'):
        return CaffeNet
    return AlexNet


def alexnet_classes(net, source):
    """The outputs of an AlexNet/CaffeNet caffemodel: fc8's weight rows
    (1000 when fc8 has no weights; the import then says so).

    Raises:
        CaffeModelError: fc8's weights are not (n >= 1, 4096), as 2-D or
            legacy 4-D (1, 1, n, 4096).
    """
    fc8 = net.layer('fc8')
    if not fc8.blobs:
        return 1000
    shape = fc8.blobs[0].shape
    rows = shape[-2] if len(shape) >= 2 else 0
    if shape[-1:] != (4096,) or rows < 1 or any(d != 1 for d in shape[:-2]):
        raise CaffeModelError('%s: layer fc8: weights of shape %s; an '
                              'AlexNet/CaffeNet fc8 has (n_classes, 4096)'
                              % (source, shape))
    return rows


def strip_label_ids(names):
    """Drop a leading integer or WordNet id from Caffe label lines
    (``0 zero``, ``n01440764 tench, Tinca tinca``)."""
    stripped = []
    for line in names:
        head, _, rest = line.partition(' ')
        is_id = head.isdigit() or (head[:1] == 'n' and head[1:].isdigit())
        stripped.append(rest.strip() if is_id and rest.strip() else line)
    return stripped


def caffemodel_to_model(caffemodel, prototxt=None):
    """Read ``caffemodel`` and return the network with its weights, for
    writing out: they are read-only views of the memory-mapped file
    (:func:`finetune.caffe.importer.bind_caffemodel`), so converting costs
    about the largest layer's memory, not the whole file's twice."""
    net = read_caffemodel(caffemodel)
    unset = Unset()  # the weights are bound next: touch no memory
    if prototxt:
        model = CaffeGraph.from_prototxt(prototxt, initialW=unset)
    else:
        kind = detect_alexnet(net, caffemodel)
        model = kind(n_classes=alexnet_classes(net, caffemodel),
                     initialW=unset)
    bind_caffemodel(model, net, source=caffemodel)
    return model


def default_preprocess(model, options, entry=None):
    """Caffe's preprocessing for ``model`` as :class:`CaffePreprocess`.

    A registry entry gives its own (:meth:`PretrainedModel.preprocess`).
    A caffemodel without a prototxt (BVLC AlexNet/CaffeNet, recognised by
    its layers): resize 256x256, ImageNet mean image, crop 227. Any other
    net: resize to its declared input size, no mean, no crop.
    ``options.resize`` (H, W) larger than the input instead resizes to
    that and takes random (training) or center (evaluation) crops of the
    input's side, as Caffe's ``transform_param { crop_size }`` does.

    Raises:
        CaffeModelError: ``resize`` smaller than the input, crops asked
            of a net with a non-square input, a mean whose channels do
            not match the net's input, an input of other than 1 or 3
            channels (no model file holds one).
    """
    mean, scale = options.mean, options.scale
    if entry is not None:
        base = entry.preprocess()
        channels, height, width = base.channels, base.crop_size, \
            base.crop_size
        size, crop = base.size, base.crop_size
        mean = base.mean if mean is None else mean
        scale = base.scale if scale is None else scale
    elif options.prototxt is None:  # BVLC AlexNet/CaffeNet
        channels, height, width = 3, 227, 227
        size, crop = (256, 256), 227
        mean = imagenet_mean() if mean is None else mean
    else:
        channels, height, width = model.net_input_shape
        size, crop = (height, width), None
        if channels not in (1, 3):
            raise CaffeModelError(
                '%s: the net takes %d input channels; images give 1 (gray) '
                'or 3 (BGR), so finetune cannot feed it'
                % (options.prototxt, channels))
    resize = options.resize
    if resize is not None and tuple(resize) != size:
        if height != width or min(resize) < height:
            raise CaffeModelError(
                '--resize %dx%d: crops must be square and fit in it; the '
                'net takes %dx%d' % (tuple(resize) + (height, width)))
        size, crop = tuple(resize), height
    if mean is not None and np.asarray(mean).size > 1 and \
            np.asarray(mean).shape[0] != channels:
        raise CaffeModelError(
            '--mean: %d channel(s) for a net with %d input channel(s)'
            % (np.asarray(mean).shape[0], channels))
    return CaffePreprocess(size, crop, mean, 1.0 if scale is None else scale,
                           channels)


def class_names_for(model, options, entry=None):
    """The class names: ``--class-names``, the registry entry's, ImageNet's for
    1,000 outputs, else ``class0, class1...``.

    Raises:
        CaffeModelError: the count does not match the net's outputs.
    """
    if options.labels:
        names = strip_label_ids(read_class_names(options.labels))
    elif entry is not None:
        names = class_names_of(entry)
    elif model.n_classes == 1000:
        names = imagenet_class_names()
    else:
        names = ['class%d' % i for i in range(model.n_classes)]
    if len(names) != model.n_classes:
        raise CaffeModelError('%s: %d class names for a net with %d outputs'
                              % (options.labels or 'class names', len(names),
                                 model.n_classes))
    return names


def conversion_record(caffemodel, options, entry=None):
    """What a model file must have been made from to be reused: the
    source's size and modification time (ns), and every option (files by
    their SHA-1, the mean by its bytes' SHA-1). JSON-serializable."""
    stat = os.stat(caffemodel)

    def file_digest(path):
        return None if path is None else sha1_of_file(path)
    mean = None if options.mean is None else hashlib.sha1(
        np.ascontiguousarray(options.mean, np.float32).tobytes()).hexdigest()
    return {'source': os.path.basename(caffemodel),
            'source_size': stat.st_size, 'source_mtime_ns': stat.st_mtime_ns,
            'registry': entry.name if entry is not None else None,
            'prototxt_sha1': file_digest(options.prototxt or (
                entry.prototxt_path() if entry is not None else None)),
            'labels_sha1': file_digest(options.labels),
            'mean_sha1': mean, 'scale': options.scale,
            'resize': list(options.resize) if options.resize else None}


def convert_caffemodel(caffemodel, out, options=ConversionOptions(),
                       entry=None):
    """Convert ``caffemodel`` to the model file ``out``; returns ``out``.

    Args:
        caffemodel (str): V1 or V2 binary caffemodel.
        out (str): destination .npz (written atomically).
        options (ConversionOptions): prototxt, labels, mean, scale, resize.
        entry (PretrainedModel or None): registry entry of the file.
    """
    if entry is not None and options.prototxt is None:
        options = dataclasses.replace(options,
                                      prototxt=entry.prototxt_path())
    model = caffemodel_to_model(caffemodel, options.prototxt)
    names = class_names_for(model, options, entry)
    save_model(out, model, names, default_preprocess(model, options, entry),
               source=os.path.basename(caffemodel),
               conversion=conversion_record(caffemodel, options, entry))
    return out


@contextlib.contextmanager
def source_lock(path):
    """Hold an exclusive lock on the file ``path``, opened read-only (works
    on read-only files and folders and leaves nothing behind)."""
    with open(path, 'rb') as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def is_up_to_date(out, caffemodel, options, entry=None):
    """True when the model file ``out`` was made from this caffemodel (same
    size and modification time) with these options."""
    if not os.path.isfile(out):
        return False
    try:
        meta = read_model_meta(out)
    except CheckpointError:
        return False
    return meta.get('conversion') == conversion_record(caffemodel, options,
                                                       entry)


def remove_stale_temporaries(out):
    """Remove the temporaries that killed conversions to ``out`` left.

    Only :func:`finetune.common.fileio.atomic_write`'s own names for
    ``out`` (``.<name>.XXXXXXXX.tmp.npz`` beside it), only regular files
    and only those no process is writing: ``write_npz`` holds a lock on
    its temporary while it writes. Call it with the conversion lock held
    (:func:`source_lock`), so that no conversion of the same source runs.

    Returns:
        list of str: the paths removed.
    """
    directory = os.path.dirname(os.path.abspath(out))
    own = re.compile(r'\.%s\.[A-Za-z0-9_]{8}\.tmp\.npz'
                     % re.escape(os.path.basename(out)))
    removed = []
    if not os.path.isdir(directory):  # made when the output is written
        return removed
    for entry in os.listdir(directory):
        if own.fullmatch(entry):
            path = os.path.join(directory, entry)
            with contextlib.suppress(OSError):
                if _remove_if_unlocked(path):
                    removed.append(path)
    return removed


def _remove_if_unlocked(path):
    """Remove the regular file ``path`` (no link followed) if no process
    holds a lock on it; True when removed."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        os.remove(path)
        return True
    finally:
        os.close(fd)


def default_output(source, caffemodel, out=None):
    """``out``; for a folder the caffemodel's name with .npz in it; for
    None the cache's file of ``source`` (the name or path given:
    :func:`finetune.weights.cache.converted_path`), never beside the
    caffemodel, whose folder may be read-only."""
    name = os.path.splitext(os.path.basename(caffemodel))[0] + '.npz'
    if out is None:
        return converted_path(source)
    if os.path.isdir(out):
        return os.path.join(out, name)
    if not out.endswith('.npz'):
        raise CaffeModelError('%s: the output must be a .npz file or an '
                              'existing folder' % out)
    return out


def ensure_converted(source, options=ConversionOptions(), out=None,
                     force=False, pretrained_dir=None, inputs=()):
    """Convert once, safely across processes; later calls reuse the file.

    Args:
        source (str): a registry name or a caffemodel path.
        options (ConversionOptions): see :class:`ConversionOptions`.
        out (str or None): output .npz, or a folder to write it in;
            default the cache's (:func:`default_output`).
        force (bool): convert even when ``out`` is up to date.
        pretrained_dir (str or None): where registry weights were
            fetched to; default the cache's.
        inputs (sequence of str): other files the options were read from
            (``--mean``'s .npy): like the caffemodel, the prototxt and the
            labels, ``out`` may not be one of them.

    Returns:
        tuple: (path of the .npz, True if this call converted it).

    Raises:
        FinetuneError: the caffemodel is missing (the message says how to
            get a registry model), unreadable or does not fit, or ``out``
            is one of the input files (also through a link).
    """
    caffemodel, entry = resolve_source(source, pretrained_dir)
    if not os.path.isfile(caffemodel):
        hint = entry.fetch_hint() if entry is not None else \
            'give a .caffemodel file or a registry name (%s)' % ', '.join(
                sorted(REGISTRY))
        raise CaffeModelError('%s: no such caffemodel; %s' % (caffemodel,
                                                             hint))
    option = '--out' if out is not None else 'the default output'
    out = default_output(source, caffemodel, out)
    read = [caffemodel, options.prototxt, options.labels, *inputs]
    refuse_overwriting_inputs(out, [path for path in read if path], option)
    with source_lock(caffemodel):
        remove_stale_temporaries(out)
        if not force and is_up_to_date(out, caffemodel, options, entry):
            return out, False
        return convert_caffemodel(caffemodel, out, options, entry), True


def parse_mean(text):
    """``--mean``: 'imagenet', 'none', an .npy file or 'B,G,R' numbers."""
    if text is None or text == 'imagenet':
        return None
    if text == 'none':
        return np.zeros(1, np.float32)
    if text.endswith('.npy'):
        try:  # memory-mapped: the header's shape is checked before reading
            mean = np.load(text, mmap_mode='r', allow_pickle=False)
        except (OSError, ValueError, EOFError) as e:
            raise CaffeModelError('--mean %s: cannot read: %s'
                                  % (text, one_line(e))) from None
        if not isinstance(mean, np.ndarray) or mean.size > MAX_MEAN_ELEMENTS:
            raise CaffeModelError('--mean %s: not a mean image of at most %d '
                                  'values' % (text, MAX_MEAN_ELEMENTS))
        return np.array(mean, np.float32)
    try:
        return np.array([float(v) for v in text.split(',')], np.float32)
    except ValueError:
        raise CaffeModelError("--mean %r: expected 'imagenet', 'none', an "
                              ".npy file or numbers like 104,117,123"
                              % text) from None
