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
from finetune.models.opencv_runner import OpenCVStages
from finetune.models.opencv_runner import select_engine
from finetune.inference.tta import OversamplePreprocess
from finetune.inference.tta import crops_problem
from finetune.inference.tta import mean_over_crops


class Predictor:
    """A ready model: its network, class names and preprocessing.

    Attributes:
        model: the Chainer network (logits out).
        class_names (list of str): one per output.
        preprocess (CaffePreprocess): image -> input array.
        meta (dict): everything stored with the weights.
        tta (bool): Caffe's 10-crop test-time augmentation: each image's
            probabilities are the mean over its four corner and centre
            crops and their mirrors (:mod:`finetune.inference.tta`).
        transform: image -> input array(s) (``preprocess``, or its
            :class:`~finetune.inference.tta.OversamplePreprocess` with
            ``tta``).
    """

    def __init__(self, model, class_names, preprocess, meta=None,
                 device=-1, backend='auto', tta=False):
        self.model = model
        self.class_names = list(class_names)
        self.preprocess = preprocess
        self.tta = bool(tta)
        problem = crops_problem(preprocess) if self.tta else None
        if problem:
            raise FinetuneError('tta: %s' % problem)
        self.transform = OversamplePreprocess(preprocess) if self.tta \
            else preprocess
        self.meta = meta or {}
        if isinstance(device, int):
            device = gpu_device(device)
        self.device = chainer.get_device(device)
        self.model.to_device(self.device)
        self.fast = None
        self._cuts = None
        self._stages = {}
        self.fast = select_engine(model, backend)

    def probabilities(self, batch):
        """Softmax outputs (N, n_classes) for a preprocessed batch: (N, C,
        H, W), or (N, 10, C, H, W) ten crops per image (:attr:`transform`
        with ``tta``), whose probabilities are averaged per image.

        On the CPU the net runs on OpenCV's dnn when available (same
        arithmetic, several times faster; ``backend='chainer'`` opts out).
        """
        batch = np.asarray(batch, dtype=np.float32)
        if batch.ndim == 5:  # forward passes of len(batch) crops each
            crops = batch.reshape((-1,) + batch.shape[2:])
            return mean_over_crops(np.concatenate([
                self.probabilities(crops[start:start + len(batch)])
                for start in range(0, len(crops), len(batch))]))
        if self.fast is not None:
            return softmax(self.fast(batch))
        with chainer.using_config('train', False), \
                chainer.using_config('enable_backprop', False):
            probs = F.softmax(self.model(self.device.send(batch))).array
        return chainer.backend.CpuDevice().send(probs)

    @property
    def engine(self):
        """What computes the outputs: 'opencv', 'chainer (CPU)' or
        'chainer (GPU)' (their last digits may differ)."""
        if self.fast is not None:
            return 'opencv'
        return 'chainer (%s)' % ('CPU' if self.device.xp is np else 'GPU')

    def feature_layers(self):
        """``{name: cut}``: the layers whose activations :meth:`features`
        gives (Caffe's blob names: ``pool5``, ``fc7``, ResNet's ``pool``...)
        and the ``forward(x, stop=cut)`` that computes each."""
        if self._cuts is None:
            self._cuts = feature_cuts(self.model)
        return self._cuts

    def feature_cut(self, layer):
        """The cut of :meth:`feature_layers` named ``layer``.

        Raises:
            FinetuneError: no such layer (the valid names are listed).
        """
        cuts = self.feature_layers()
        if layer not in cuts:
            raise FinetuneError('features layer %r: not a layer of this net '
                                '(valid: %s)' % (layer, ', '.join(cuts)))
        return cuts[layer]

    def outputs(self, batch, layer=None):
        """(probabilities (N, n_classes), float32 activations (N, ...) at
        ``layer`` or None) of a preprocessed batch, from one forward pass.
        """
        if layer is None:
            return self.probabilities(batch), None
        if self.tta:
            raise FinetuneError('features of layer %r: not with tta (one '
                                'activation per image, not per crop)'
                                % layer)
        cut = self.feature_cut(layer)
        batch = np.asarray(batch, dtype=np.float32)
        if self.fast is not None:
            features, logits = self._fast_outputs(cut, batch)
            return softmax(logits), features
        with chainer.using_config('train', False), \
                chainer.using_config('enable_backprop', False):
            h = self.model.forward(self.device.send(batch), stop=cut)
            logits = self.model.forward(h, start=cut)
            probs = F.softmax(logits).array
        cpu = chainer.backend.CpuDevice()
        return cpu.send(probs), cpu.send(h.array).astype(np.float32)

    def _fast_outputs(self, cut, batch):
        """(activations at ``cut``, logits) from OpenCV: in one pass, the
        whole net asked for both outputs, when that gives what the net cut
        there gives (checked on the first batch: OpenCV fuses some layers
        into others and then cannot give their outputs), else in two."""
        if cut not in self._stages:
            stages = OpenCVStages(self.model, cut)
            self._stages[cut] = (stages, stages.output in
                                 self.fast.net.getLayerNames())
            if self._stages[cut][1]:
                one = self._one_pass(stages, batch)[0]
                two = self._shaped(stages, stages(batch), len(batch))
                with np.errstate(invalid='ignore', over='ignore'):
                    same = np.abs(one - two).max() <= \
                        1e-5 * np.abs(two).max()
                self._stages[cut] = (stages, bool(same))
        stages, one_pass = self._stages[cut]
        if one_pass:
            features, logits = self._one_pass(stages, batch)
        else:
            features = self._shaped(stages, stages(batch), len(batch))
            logits = self.fast(batch)
        return features, logits.reshape(len(batch), -1)

    def _one_pass(self, stages, batch):
        whole = self.fast
        whole.net.setInput(np.ascontiguousarray(batch))
        features, logits = whole.net.forward([stages.output, whole.output])
        return self._shaped(stages, features, len(batch)), logits

    @staticmethod
    def _shaped(stages, features, n):
        if stages.shape is not None:
            features = features.reshape((n,) + tuple(stages.shape))
        return features.astype(np.float32, copy=False)

    def features(self, images, layer, batch_size=32):
        """Activations of ``images`` at the layer named ``layer``.

        Args:
            images: as :meth:`predict` takes them.
            layer (str): a name of :meth:`feature_layers` (``'fc7'``,
                ``'pool5'``, ResNet's ``'pool'``...).
            batch_size (int): images per forward pass.

        Returns:
            numpy.ndarray: float32 (N, ...): one row per image, the shape
            of the layer's output blob after it (e.g. (N, 4096) for fc7,
            (N, 256, 6, 6) for pool5).

        Raises:
            FinetuneError: an unknown layer (the valid ones are listed) or
                a batch_size that is not an integer >= 1.
            DataError: an image that cannot be read.
        """
        check_batch_size(batch_size)
        self.feature_cut(layer)
        rows = [features for _, features in
                self._batches(images, batch_size, layer)]
        if rows:
            return np.concatenate(rows)
        return np.zeros((0,) + self.feature_shape(layer), np.float32)

    def feature_shape(self, layer):
        """Shape per image of :meth:`features` at ``layer``."""
        x = np.zeros((1,) + self.preprocess.input_shape, np.float32)
        return self.outputs(x, layer)[1].shape[1:]

    def _batches(self, images, batch_size, layer=None):
        """(probs, features or None) of each batch of ``images``."""
        if isinstance(images, (str, os.PathLike, Image.Image, np.ndarray)):
            images = [images]
        images = [as_image(image) for image in images]
        for start in range(0, len(images), batch_size):
            batch = [self.transform(img)
                     for img in images[start:start + batch_size]]
            yield self.outputs(np.stack(batch), layer)

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
            FinetuneError: a batch_size that is not an integer >= 1.
        """
        check_batch_size(batch_size)
        probs = [p for p, _ in self._batches(images, batch_size)]
        probs = (np.concatenate(probs) if probs else
                 np.zeros((0, len(self.class_names)), np.float32))
        labels = [self.class_names[i] for i in probs.argmax(axis=1)]
        return labels, probs


def check_batch_size(value, name='batch_size'):
    """Refuse a batch size that is not an int >= 1 (0 used to give an
    empty result, -1 a traceback).

    Raises:
        FinetuneError: naming ``name`` and the value.
    """
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) \
            or value < 1:
        raise FinetuneError('%s: expected an integer >= 1, got %r'
                            % (name, value))


def feature_cuts(model):
    """``{blob name: cut}`` of the blobs ``model.forward(x, stop=cut)``
    can return (the input left out), in the net's order.

    The one blob crossing each valid cut before a weighted layer, and the
    output; AlexNet's are ``pool1``, ``pool2``, ``conv3``, ``conv4``,
    ``pool5``, ``fc6``, ``fc7``, ``fc8`` (in-place ReLU and dropout
    included).
    """
    tops = {layer.name: tuple(layer.top) for layer in model.net_param.layer}
    names = model.layer_names
    # a blob that in-place layers (BatchNorm, Scale, ReLU) rewrite goes by
    # its last version, as Caffe's net.blobs[name] after a forward pass:
    # not at a cut whose next layer rewrites it
    return {model.cut_blobs(k)[0]: k for k in model.valid_cuts()
            if k and (k == len(names) or model.cut_blobs(k)[0]
                      not in tops[names[k]])}


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


def top_k_accuracy(scores, labels, k):
    """Fraction of rows whose label is among the k highest scores.

    Args:
        scores (numpy.ndarray or cupy.ndarray): (N, C) float logits or
            probabilities. Ties rank the lower class index first, as
            ``argmax`` does, so ``k=1`` is plain accuracy.
        labels (array of the same module): (N,) int class indices.
        k (int): clipped to C.

    Returns:
        0-d array of ``scores``' dtype and module, in [0, 1]; NaN when N
        is 0.
    """
    if len(labels) == 0:
        return scores.dtype.type('nan')
    best = top_k(scores, k)
    return (best == labels[:, None]).any(axis=1).mean(dtype=scores.dtype)


def softmax(logits):
    """Row-wise softmax of float logits (N, C), computed stably."""
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)


def load(path, device=-1, backend='auto', tta=False):
    """Load a model file written by finetune into a :class:`Predictor`.

    Args:
        path (str): ``.npz`` from ``finetune.train`` or ``finetune.convert``.
        device: Chainer device spec (-1 or ``'@numpy'`` for CPU, 0 or
            ``'@cupy:0'`` for the first GPU).
        backend (str): CPU inference engine: 'auto' (OpenCV's dnn when
            installed), 'opencv' or 'chainer'.
        tta (bool): 10-crop test-time augmentation (see :class:`Predictor`).
    """
    model, meta, preprocess = load_model(path)
    return Predictor(model, meta['class_names'], preprocess, meta, device,
                     backend, tta)
