"""Chainer datasets over the image lists :mod:`finetune.data.folder` writes."""
import logging
import os

import chainer
import numpy as np

from finetune.common.errors import DataError

logger = logging.getLogger(__name__)


class LabeledImageDataset(chainer.dataset.DatasetMixin):
    """Images and integer labels, preprocessed for the network.

    ``dataset[i]`` is ``(image, label)``: ``image`` is what
    ``preprocess(path, train=train, rng=...)`` returns, float32 (C, H, W),
    and ``label`` an ``numpy.int32``.

    **Randomness.** In train mode every example gets its own
    ``numpy.random.RandomState``, seeded with the next value drawn from a
    per-dataset stream generator seeded with ``seed``. The ``k``-th example
    read from a dataset therefore gets the same crop and mirror for the same
    ``seed``, whichever index it is and however many random numbers
    ``preprocess`` consumes: two datasets built with the same seed give
    identical sequences when read in the same order in one process (with
    ``SerialIterator``, whose order is itself seeded by its
    ``order_sampler``). ``seed=None`` seeds the stream from the operating
    system.

    Worker processes (``MultiprocessIterator``) each receive a copy of the
    dataset, stream included; left alone, every worker would replay the same
    draws, and Chainer 7 does not reseed them. So a copy that finds itself
    in a process other than the one that built it reseeds its stream from
    the operating system once. Crops are then different in every worker but
    not reproducible, which they could not be anyway: which worker loads
    which index is decided by the pool's scheduling.

    **Broken files.** An image that cannot be loaded (deleted or corrupted
    after the data was verified) does not stop training: one warning naming
    the file is logged (once per file and process), the file is skipped from
    then on, and the next index (cyclically) is returned instead, with its
    own label. :class:`~finetune.common.errors.DataError` is raised only when
    ``max_attempts`` files in a row fail, or all of them.

    Args:
        root (str): folder the entry paths are relative to.
        entries (list): ``(relative_path, label)`` tuples.
        preprocess (callable): ``preprocess(path, train=..., rng=...)`` ->
            float32 (C, H, W), e.g.
            :class:`~finetune.data.transforms.CaffePreprocess`.
        train (bool): random crop and mirror instead of a center crop.
        seed (int or None): seed of the per-example random generators.
        max_attempts (int): files tried for one example before giving up.
    """

    def __init__(self, root, entries, preprocess, train=False, seed=None,
                 max_attempts=10):
        self.root = root
        self.preprocess = preprocess
        self.train = train
        self.max_attempts = max_attempts
        self._paths = [str(path) for path, _ in entries]
        self._labels = np.asarray([label for _, label in entries], np.int32)
        self._stream = np.random.RandomState(seed)
        self._owner_pid = os.getpid()
        self._broken = set()

    def __len__(self):
        return len(self._paths)

    @property
    def labels(self):
        """int32 array (N,) of the labels."""
        return self._labels

    def path(self, i):
        """Full path of the ``i``-th image."""
        return os.path.join(self.root, self._paths[i])

    def _example_rng(self):
        """A fresh generator for one example, or None when not training."""
        if not self.train:
            return None
        if os.getpid() != self._owner_pid:
            # A copy in a worker process: stop replaying the parent's draws.
            self._stream = np.random.RandomState()
            self._owner_pid = os.getpid()
        return np.random.RandomState(self._stream.randint(2 ** 32,
                                                          dtype=np.uint64))

    def _load(self, j, rng):
        """Preprocessed image ``j``, or None after warning once if it fails."""
        path = self.path(j)
        try:
            return self.preprocess(path, train=self.train, rng=rng)
        except (DataError, OSError) as e:
            self._broken.add(j)
            message = str(e) if path in str(e) else '%s: %s' % (path, e)
            logger.warning('%s; skipped, another image used instead',
                           message)
            return None

    def get_example(self, i):
        """(float32 (C, H, W) image, int32 label) of example ``i``, or of
        the next loadable one if image ``i`` cannot be loaded."""
        n = len(self)
        if not -n <= i < n:
            raise IndexError('index %d out of range for %d examples'
                             % (i, n))
        rng = self._example_rng()
        attempts = 0
        for offset in range(n):
            j = (i + offset) % n
            if j in self._broken:
                continue
            if attempts == self.max_attempts:
                break
            attempts += 1
            image = self._load(j, rng)
            if image is not None:
                return image, self._labels[j]
        raise DataError(
            '%s: cannot load %s nor the other images tried (%d files in '
            'all); is the data folder still there?'
            % (self.root, self._paths[i], attempts))
