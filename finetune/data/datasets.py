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
    ``preprocess(path)`` returns, float32 (C, H, W) (uncropped for
    training: random crops are drawn per step by
    :class:`finetune.training.extensions.RandomCropConverter`, from the
    seeded state snapshots save), and ``label`` a ``numpy.int32``.

    **Broken files.** An image that cannot be loaded (deleted or corrupted
    after the data was verified) does not stop training: one warning naming
    the file is logged (once per file and process), the file is skipped from
    then on, and the next index (cyclically) is returned instead, with its
    own label. :class:`~finetune.common.errors.DataError` is raised only when
    ``max_attempts`` files in a row fail, or all of them.

    Args:
        root (str): folder the entry paths are relative to.
        entries (list): ``(relative_path, label)`` tuples.
        preprocess (callable): ``preprocess(path)`` -> float32 (C, H, W),
            e.g. :class:`~finetune.data.transforms.CaffePreprocess`.
        max_attempts (int): files tried for one example before giving up.
    """

    def __init__(self, root, entries, preprocess, max_attempts=10):
        self.root = root
        self.preprocess = preprocess
        self.max_attempts = max_attempts
        self._paths = [str(path) for path, _ in entries]
        self._labels = np.asarray([label for _, label in entries], np.int32)
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

    def _load(self, j):
        """Preprocessed image ``j``, or None after warning once if it fails."""
        path = self.path(j)
        try:
            return self.preprocess(path)
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
        attempts = 0
        for offset in range(n):
            j = (i + offset) % n
            if j in self._broken:
                continue
            if attempts == self.max_attempts:
                break
            attempts += 1
            image = self._load(j)
            if image is not None:
                return image, self._labels[j]
        raise DataError(
            '%s: cannot load %s nor the other images tried (%d files in '
            'all); is the data folder still there?'
            % (self.root, self._paths[i], attempts))


class ImagePathDataset(chainer.dataset.DatasetMixin):
    """Paths -> (float32 (C, H, W) input, error message or '') for
    prediction: an unreadable image gives zeros and its one-line problem
    (``'<path>: <code>'``, codes of :data:`finetune.data.images.PROBLEMS`)."""

    def __init__(self, paths, preprocess):
        self.paths = paths
        self.preprocess = preprocess

    def __len__(self):
        return len(self.paths)

    def get_example(self, i):
        try:
            return self.preprocess(self.paths[i]), ''
        except (DataError, OSError, ValueError) as e:
            blank = np.zeros(self.preprocess.input_shape, np.float32)
            return blank, str(e)
