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
crops; see benchmarks/README.md.) Caches are memory-mapped ``.npy`` files,
so datasets larger than memory work, and are keyed by a hash of the frozen
weights (BatchNorm statistics included), the preprocessing, the crop set
and the image files (path, size, mtime): any change builds a new cache.
"""
import hashlib
import json
import os

import chainer
import numpy as np

from finetune.common.fileio import atomic_write
from finetune.data.loader import make_iterator

FORMAT_VERSION = 2
#: Seeds the crops of the cache (with each image's index), so caches do not
#: depend on the run's ``--seed`` and are reused across runs.
CROP_SEED = 0x5EED


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


def build_feature_cache(path, trunk, dataset, preprocess, mode, device,
                        batch_size=32, loaderjob=2, count=10):
    """Write the frozen-prefix features of every image and window.

    Args:
        path (str): destination ``.npy`` (written atomically).
        trunk (callable): batch (N, C, crop, crop) -> features (no graph).
        dataset: uncropped ``(image (C, H, W), label)`` examples.
        mode (str): 'random' or 'center'; ``count`` crops per image in
            'random' mode (see :func:`crop_windows`).

    Returns:
        numpy.memmap of shape (N, K, *feature_shape), float32.
    """
    iterator = make_iterator(dataset, batch_size, loaderjob, repeat=False,
                             shuffle=False)
    out = None
    index = 0
    try:
        with atomic_write(path, suffix='.npy') as tmp:
            for batch in iterator:
                crops = np.concatenate([
                    take_crops(x, preprocess, crop_windows(
                        preprocess, index + i, mode, count))
                    for i, (x, _) in enumerate(batch)])
                with chainer.using_config('train', False), \
                        chainer.no_backprop_mode():
                    h = trunk(device.send(crops)).array
                h = chainer.backend.CpuDevice().send(h)
                h = h.reshape((len(batch), -1) + h.shape[1:])
                if out is None:
                    out = np.lib.format.open_memmap(
                        tmp, mode='w+', dtype=np.float32,
                        shape=(len(dataset),) + h.shape[1:])
                out[index:index + len(batch)] = h
                index += len(batch)
            out.flush()
            del out
    finally:
        iterator.finalize()
    return np.load(path, mmap_mode='r')


def cached_features(cache_dir, split, net, frozen_names, trunk, root,
                    entries, dataset, preprocess, mode, device, batch_size,
                    loaderjob, count=10):
    """The cached features for ``entries``, built if missing or stale.

    Returns:
        tuple: (path of the cache .npy, True if it was built now).
    """
    key = cache_key(net, frozen_names, preprocess, root, entries, mode,
                    count)
    path = os.path.join(cache_dir, '%s-%s.npy' % (split, key[:20]))
    if os.path.exists(path):
        return path, False
    os.makedirs(cache_dir, exist_ok=True)
    for name in os.listdir(cache_dir):  # stale caches of this split
        if name.startswith(split + '-') and name.endswith('.npy'):
            os.remove(os.path.join(cache_dir, name))
    build_feature_cache(path, trunk, dataset, preprocess, mode, device,
                        batch_size, loaderjob, count)
    return path, True


class CachedFeatureDataset(chainer.dataset.DatasetMixin):
    """``(features of every window (K, ...), label)`` per image, read
    lazily from the memory-mapped cache file.

    Pickles as the file name (not the data), so worker processes and other
    ranks open the file themselves.
    """

    def __init__(self, path, labels):
        self.path = path
        self.labels = np.asarray(labels, np.int32)
        self._features = None

    def __len__(self):
        return len(self.labels)

    def __getstate__(self):
        return dict(self.__dict__, _features=None)

    def get_example(self, i):
        if self._features is None:
            self._features = np.load(self.path, mmap_mode='r')
        return self._features[i], self.labels[i]


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
