"""Classify images with a saved model: ``finetune.load(path).predict(...)``."""
import os

import chainer
import chainer.functions as F
import numpy as np
from PIL import Image

from finetune.models.model_file import load_model
from finetune.common.errors import DataError
from finetune.common.errors import FinetuneError
from finetune.common.gpu import device as gpu_device
from finetune.models.opencv_runner import fast_stages


class Predictor:
    """A ready model: its network, class names and preprocessing.

    Attributes:
        model: the Chainer network (logits out).
        class_names (list of str): one per output.
        preprocess (CaffePreprocess): image -> input array.
        meta (dict): everything stored with the weights.
    """

    def __init__(self, model, class_names, preprocess, meta=None,
                 device=-1, backend='auto'):
        self.model = model
        self.class_names = list(class_names)
        self.preprocess = preprocess
        self.meta = meta or {}
        if isinstance(device, int):
            device = gpu_device(device)
        self.device = chainer.get_device(device)
        self.model.to_device(self.device)
        self.fast = None
        if backend != 'chainer' and self.device.xp is np:
            self.fast = fast_stages(model)
            if self.fast is None and backend == 'opencv':
                raise FinetuneError('backend opencv: OpenCV is not '
                                    'installed or cannot run this net '
                                    'exactly (LRN k != 1)')

    def probabilities(self, batch):
        """Softmax outputs (N, n_classes) for a preprocessed batch.

        On the CPU the net runs on OpenCV's dnn when available (same
        arithmetic, several times faster; ``backend='chainer'`` opts out).
        """
        batch = np.asarray(batch, dtype=np.float32)
        if self.fast is not None:
            return softmax(self.fast(batch))
        with chainer.using_config('train', False), \
                chainer.using_config('enable_backprop', False):
            probs = F.softmax(self.model(self.device.send(batch))).array
        return chainer.backend.CpuDevice().send(probs)

    def predict(self, images, batch_size=32):
        """Classify images.

        Args:
            images: a path, a PIL image or a uint8 (H, W, 3) RGB / (H, W)
                gray NumPy array (as ``numpy.asarray(PIL.Image)`` gives),
                or a list of those.
            batch_size (int): images per forward pass.

        Returns:
            tuple: (labels, probs): the top-1 class name of each image and
            the (N, n_classes) float32 probabilities.

        Raises:
            DataError: an image that cannot be read, is empty, or an array
                of another shape or dtype.
        """
        if isinstance(images, (str, os.PathLike, Image.Image, np.ndarray)):
            images = [images]
        images = [as_image(image) for image in images]
        probs = []
        for start in range(0, len(images), batch_size):
            batch = [self.preprocess(img)
                     for img in images[start:start + batch_size]]
            probs.append(self.probabilities(np.stack(batch)))
        probs = (np.concatenate(probs) if probs else
                 np.zeros((0, len(self.class_names)), np.float32))
        labels = [self.class_names[i] for i in probs.argmax(axis=1)]
        return labels, probs


def as_image(image):
    """A path (str) or PIL image for :class:`CaffePreprocess`, from a path,
    a PIL image or a uint8 HWC RGB / HW gray array.

    Raises:
        DataError: an empty image or an array that is not one of those.
    """
    if isinstance(image, os.PathLike):
        return os.fspath(image)
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8 or not (
                image.ndim == 2 or (image.ndim == 3 and image.shape[2] == 3)):
            raise DataError('array of shape %s and dtype %s: expected uint8 '
                            '(H, W, 3) RGB or (H, W) gray'
                            % (image.shape, image.dtype))
        image = Image.fromarray(image)
    if isinstance(image, Image.Image) and 0 in image.size:
        raise DataError('empty image (%dx%d)' % image.size)
    if not isinstance(image, (str, Image.Image)):
        raise DataError('%r: expected a path, a PIL image or a uint8 array'
                        % (image,))
    return image


def top_k(probs, k):
    """Indices (N, k) of the k largest scores per row, best first (ties:
    lower class index first, as ``argmax``); k is clipped to C. Works on
    NumPy and CuPy arrays."""
    xp = chainer.backend.get_array_module(probs)
    stable = {'kind': 'stable'} if xp is np else {}
    order = xp.argsort(-probs, axis=1, **stable)
    return order[:, :min(k, probs.shape[1])]


def softmax(logits):
    """Row-wise softmax of float logits (N, C), computed stably."""
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)


def load(path, device=-1, backend='auto'):
    """Load a model file written by finetune into a :class:`Predictor`.

    Args:
        path (str): ``.npz`` from ``finetune.train`` or ``finetune.convert``.
        device: Chainer device spec (-1 or ``'@numpy'`` for CPU, 0 or
            ``'@cupy:0'`` for the first GPU).
        backend (str): CPU inference engine: 'auto' (OpenCV's dnn when
            installed), 'opencv' or 'chainer'.
    """
    model, meta, preprocess = load_model(path)
    return Predictor(model, meta['class_names'], preprocess, meta, device,
                     backend)
