"""Frozen-trunk feature cache: run the frozen layers once per image and crop.

When the first layers of the net are frozen, their output for a given crop
never changes, so it is computed once and stored on disk; the head then
trains on the stored features (``--cache-features``) and evaluation reads
them every epoch. Training crops are a fixed set per image: ``count``
(default 10) crops drawn exactly as the uncached run draws its random
crops and mirrors, from a generator seeded by the image's index; each epoch
samples one of them per image. (Caffe's 10-crop set of corners and center
was measured and rejected: 4 of its 5 positions are the extreme shifts, so
the head trains on a harder distribution than the centered evaluation
crops; see benchmarks/README.md.) Caches are ``.npy`` files written and
read a batch at a time (never mapped or loaded whole), so the memory a run
holds grows with the batch size, not with the number of images, and are
keyed by a hash of the frozen weights (BatchNorm statistics included), the
preprocessing, the crop set and the image files (path, size, mtime): any
change builds a new cache. A build killed midway leaves a hidden
temporary (``.<name>.npy.<random>.tmp.npy``, see
:func:`finetune.common.fileio.atomic_write`); the next run on the same
``--out`` removes it.
"""
import hashlib
import json
import os
import re

import chainer
import numpy as np

from finetune.common.errors import DataError
from finetune.common.fileio import atomic_write
from finetune.data.loader import make_iterator

FORMAT_VERSION = 2
#: Seeds the crops of the cache (with each image's index), so caches do not
#: depend on the run's ``--seed`` and are reused across runs.
CROP_SEED = 0x5EED
#: The name of a cache file (``<split>-<20 hex digits of the key>.npy``).
CACHE_NAME = re.compile(r'^[a-z]+-[0-9a-f]{20}\.npy$')
#: The temporary atomic_write writes a cache file to.
CACHE_TEMPORARY = re.compile(r'^\.[a-z]+-[0-9a-f]{20}\.npy\.\w+\.tmp\.npy$')
#: float32 as cache files store it.
FEATURE_DTYPE = np.dtype('<f4')


def crop_windows(preprocess, index, mode, count=10):
    """Windows (top, left, mirrored) cached for image number ``index``.

    ``mode`` 'random': ``count`` crops drawn by
    :meth:`~finetune.data.transforms.CaffePreprocess.crop_window` as in
    training; 'center': the evaluation crop. With no crop there is one
    window, ``None`` (the whole image).
    """
    if preprocess.crop_size is None or mode == 'center':
        return [preprocess.crop_window()]
    rng = np.random.RandomState([CROP_SEED, index])
    return [preprocess.crop_window(True, rng) for _ in range(count)]


def take_crops(array, preprocess, windows):
    """The windows of ``array`` (C, H, W) stacked: (K, C, crop, crop)."""
    return np.stack([preprocess.crop(array, window=w) for w in windows])


def frozen_values(link):
    """(name, NumPy array) of everything a frozen layer computes with, as
    its serialization holds it: the parameters and the persistent values
    (BatchNorm's stored mean, variance and factor), sorted by name."""
    serializer = chainer.serializers.DictionarySerializer()
    serializer.save(link)
    return sorted((name, np.ascontiguousarray(value))
                  for name, value in serializer.target.items())


def cache_key(net, frozen_names, preprocess, root, entries, mode,
              count=10):
    """Hex digest of everything the cached features depend on."""
    digest = hashlib.sha1()
    digest.update(json.dumps([FORMAT_VERSION, CROP_SEED, count,
                              list(frozen_names), mode,
                              list(preprocess.size), preprocess.crop_size,
                              preprocess.scale, preprocess.channels]).encode())
    digest.update(np.ascontiguousarray(preprocess.mean).tobytes())
    for name in frozen_names:
        for value_name, value in frozen_values(net[name]):
            digest.update(value_name.encode())
            digest.update(value.tobytes())
    for path, label in entries:
        stat = os.stat(os.path.join(root, path))
        digest.update(('%s\0%d\0%d\0%d\n' % (path, label, stat.st_size,
                                            stat.st_mtime_ns)).encode())
    return digest.hexdigest()


def windows_per_image(preprocess, mode, count=10):
    """How many crops :func:`crop_windows` gives each image."""
    return len(crop_windows(preprocess, 0, mode, count))


def trunk_features(trunk, crops, device):
    """``trunk`` on ``crops`` (N, C, crop, crop) in test mode, without a
    graph: float32 NumPy features (N, ...)."""
    with chainer.using_config('train', False), chainer.no_backprop_mode():
        h = trunk(device.send(crops)).array
    return np.asarray(chainer.backend.CpuDevice().send(h), FEATURE_DTYPE)


def build_feature_cache(path, trunk, dataset, preprocess, mode, device,
                        batch_size=32, loaderjob=2, count=10):
    """Write the frozen-prefix features of every image and window.

    Images are loaded ``batch_size // K`` at a time (K windows each, at
    least one image), so the trunk sees at most ``batch_size`` crops per
    call (or one image's K) and each batch of features is appended to the
    file: the memory held is one batch's, whatever the number of images.

    Args:
        path (str): destination ``.npy`` (written atomically).
        trunk (callable): batch (N, C, crop, crop) -> features (no graph).
        dataset: uncropped ``(image (C, H, W), label)`` examples.
        mode (str): 'random' or 'center'; ``count`` crops per image in
            'random' mode (see :func:`crop_windows`).

    Returns:
        str: ``path``, holding float32 (N, K, *feature_shape).
    """
    images = max(1, batch_size // windows_per_image(preprocess, mode, count))
    iterator = make_iterator(dataset, images, loaderjob, repeat=False,
                             shuffle=False)
    index = 0
    try:
        with atomic_write(path, suffix='.npy') as tmp, open(tmp, 'wb') as f:
            for batch in iterator:
                crops = np.concatenate([
                    take_crops(x, preprocess, crop_windows(
                        preprocess, index + i, mode, count))
                    for i, (x, _) in enumerate(batch)])
                h = trunk_features(trunk, crops, device)
                h = h.reshape((len(batch), -1) + h.shape[1:])
                if index == 0:
                    np.lib.format.write_array_header_1_0(f, {
                        'descr': FEATURE_DTYPE.str, 'fortran_order': False,
                        'shape': (len(dataset),) + h.shape[1:]})
                f.write(np.ascontiguousarray(h).tobytes())
                index += len(batch)
    finally:
        iterator.finalize()
    return path


def cache_layout(path, n_images):
    """(data offset in bytes, shape of one image's features (K, ...)) of
    the cache file ``path``, checked before anything is read from it: a
    float32 C-order ``.npy`` of ``n_images`` rows whose size is what its
    header says (so no header can make a reader allocate more than the
    file holds).

    Raises:
        DataError: not such a file (the message names it).
    """
    try:
        with open(path, 'rb') as f:
            version = np.lib.format.read_magic(f)
            read_header = np.lib.format.read_array_header_1_0 \
                if version == (1, 0) else np.lib.format.read_array_header_2_0
            shape, fortran, dtype = read_header(f)
            offset = f.tell()
            size = os.fstat(f.fileno()).st_size
    except (OSError, ValueError, SyntaxError, TypeError) as e:
        raise DataError('%s: not a readable feature cache (%s); delete it '
                        'and run again' % (path, str(e).split('\n')[0])
                        ) from None
    problem = layout_problem(shape, fortran, dtype, size - offset, n_images)
    if problem:
        raise DataError('%s: not a feature cache of these images (it %s); '
                        'delete it and run again' % (path, problem))
    return offset, tuple(shape[1:])


def layout_problem(shape, fortran, dtype, data_bytes, n_images):
    """What is wrong with a cache file of this header and ``data_bytes``
    after it for ``n_images`` images, or None."""
    if dtype != FEATURE_DTYPE:
        return 'holds %s, not float32' % dtype
    if fortran:
        return 'is in Fortran order'
    if len(shape) < 2 or shape[0] != n_images:
        return 'has shape %s, not %d rows of features' % (shape, n_images)
    expected = n_images * FEATURE_DTYPE.itemsize
    for dim in shape[1:]:
        expected *= dim  # Python ints: no overflow
    if expected == 0 or data_bytes != expected:
        return 'holds %d bytes of data, its header says %d' % (data_bytes,
                                                              expected)
    return None


def remove_stale_temporaries(cache_dir):
    """Remove what killed builds left in ``cache_dir`` (cache files'
    temporaries, :data:`CACHE_TEMPORARY`). Call it holding the run's
    ``<out>/.lock`` (:func:`finetune.training.run_dir.exclusive_run`, as
    :func:`finetune.fit` does): no live build then writes there."""
    for name in os.listdir(cache_dir):
        if CACHE_TEMPORARY.match(name):
            os.remove(os.path.join(cache_dir, name))


def cached_features(cache_dir, split, net, frozen_names, trunk, root,
                    entries, dataset, preprocess, mode, device, batch_size,
                    loaderjob, count=10):
    """The cached features for ``entries``, built if missing, stale or
    damaged. The caller holds ``<out>/.lock`` (see
    :func:`remove_stale_temporaries`).

    Returns:
        tuple: (path of the cache .npy, True if it was built now).
    """
    key = cache_key(net, frozen_names, preprocess, root, entries, mode,
                    count)
    path = os.path.join(cache_dir, '%s-%s.npy' % (split, key[:20]))
    os.makedirs(cache_dir, exist_ok=True)
    remove_stale_temporaries(cache_dir)
    if os.path.exists(path):
        try:
            cache_layout(path, len(entries))
            return path, False
        except DataError:
            pass  # damaged: built again below
    for name in os.listdir(cache_dir):  # caches of this split (older keys)
        if name.startswith(split + '-') and CACHE_NAME.match(name):
            os.remove(os.path.join(cache_dir, name))
    build_feature_cache(path, trunk, dataset, preprocess, mode, device,
                        batch_size, loaderjob, count)
    return path, True


class CachedFeatureDataset(chainer.dataset.DatasetMixin):
    """``(features of every window (K, ...) float32, label)`` per image,
    read from the cache file one image at a time (:func:`os.pread`: the
    pages stay in the page cache, not in this process).

    Pickles as the file name (not the data or the open file), so worker
    processes and other ranks open the file themselves.

    Raises:
        DataError: on first use, when the file is not a cache of
            ``len(labels)`` images (:func:`cache_layout`).
    """

    def __init__(self, path, labels):
        self.path = path
        self.labels = np.asarray(labels, np.int32)
        self._file = None
        self._layout = None

    def __len__(self):
        return len(self.labels)

    def __getstate__(self):
        return dict(self.__dict__, _file=None, _layout=None)

    def get_example(self, i):
        if self._layout is None:
            self._layout = cache_layout(self.path, len(self.labels))
            self._file = open(self.path, 'rb')
        offset, shape = self._layout
        i = range(len(self.labels))[i]  # IndexError out of range
        size = int(np.prod(shape)) * FEATURE_DTYPE.itemsize
        data = os.pread(self._file.fileno(), size, offset + i * size)
        if len(data) != size:
            raise DataError('%s: shorter than its header says (changed '
                            'while training?)' % self.path)
        return np.frombuffer(data, FEATURE_DTYPE).reshape(shape), \
            self.labels[i]


class CachedCropConverter:
    """Picks one cached window per example: at random when training (from
    a seeded generator, like :class:`finetune.training.extensions.RandomCropConverter`)
    or the first (the center crop) otherwise."""

    def __init__(self, seed, train=True):
        self.rng = np.random.RandomState(seed)
        self.train = train

    def __call__(self, batch, device=None):
        picked = []
        for features, label in batch:
            k = self.rng.randint(len(features)) if self.train else 0
            picked.append((np.array(features[k]), label))
        return chainer.dataset.concat_examples(picked, device)
