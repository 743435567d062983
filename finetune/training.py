"""Pieces the trainer is assembled from: loss, batches, extensions.

Everything random in a run is either a function of the seed and state that
snapshots save (batch order: :class:`finetune.loader.SeededOrderSampler`)
or drawn from generators whose state snapshots save
(:class:`RandomStateSnapshot`: crops, mirrors, dropout). Workers only
decode and resize. So a run killed and resumed ends with the same weights
as one that never stopped.
"""
import math
import os

import chainer
import chainer.functions as F
import numpy as np
from chainer.dataset import concat_examples
from chainer.training import extension


def top_k_accuracy(y, t, k=5):
    """Fraction of rows whose label is among the k largest logits."""
    xp = chainer.backend.get_array_module(y)
    scores = y.array if isinstance(y, chainer.Variable) else y
    k = min(k, scores.shape[1])
    best = xp.argsort(-scores, axis=1)[:, :k]
    return (best == t[:, None]).any(axis=1).mean(dtype=scores.dtype)


class Classifier(chainer.Chain):
    """Softmax cross-entropy with top-1/top-5 accuracy reported.

    Reports ``loss``, ``accuracy`` and ``top5`` (as ``main/...`` in
    training and ``validation/main/...`` in evaluation).
    """

    def __init__(self, predictor):
        super().__init__()
        with self.init_scope():
            self.predictor = predictor

    def forward(self, x, t):
        y = self.predictor(x)
        loss = F.softmax_cross_entropy(y, t)
        chainer.report({'loss': loss, 'accuracy': F.accuracy(y, t),
                        'top5': top_k_accuracy(y.array, t)}, self)
        return loss


class RandomCropConverter:
    """Batches of uncropped images -> random crops and mirrors, on device.

    Workers return full-size (C, H, W) arrays; cropping here, from one
    generator whose state is saved in snapshots, keeps the augmentation
    reproducible however many workers load the images.
    """

    def __init__(self, preprocess, seed):
        self.preprocess = preprocess
        self.rng = np.random.RandomState(seed)

    def __call__(self, batch, device=None):
        cropped = [(self.preprocess.crop(x, train=True, rng=self.rng), t)
                   for x, t in batch]
        return concat_examples(cropped, device)


def _serialize_random_state(serializer, key, get_state, set_state):
    saving = isinstance(serializer, chainer.serializer.Serializer)
    keys = np.zeros(624, np.uint32)
    numbers = np.zeros(3, np.float64)
    if saving:
        _, keys, pos, has_gauss, cached = get_state()
        numbers = np.array([pos, has_gauss, cached], np.float64)
    keys = serializer(key + '_keys', keys)
    numbers = serializer(key + '_numbers', numbers)
    if not saving:
        set_state(('MT19937', np.asarray(keys, np.uint32), int(numbers[0]),
                   int(numbers[1]), float(numbers[2])))


class RandomStateSnapshot(extension.Extension):
    """Saves and restores the crop generator and NumPy's global generator
    (Chainer's CPU dropout draws from it) with each snapshot."""

    trigger = (1, 'iteration')
    priority = extension.PRIORITY_READER

    def __init__(self, converter):
        self.converter = converter

    def __call__(self, trainer):
        pass

    def serialize(self, serializer):
        rng = self.converter.rng
        _serialize_random_state(serializer, 'crop', rng.get_state,
                                rng.set_state)
        _serialize_random_state(serializer, 'global', np.random.get_state,
                                np.random.set_state)


class SaveBestModel(extension.Extension):
    """Writes the model whenever ``key`` (validation accuracy) improves."""

    trigger = (1, 'epoch')
    priority = extension.PRIORITY_READER

    def __init__(self, save, key='validation/main/accuracy'):
        self.save = save
        self.key = key
        self.best = -math.inf

    def __call__(self, trainer):
        value = trainer.observation.get(self.key)
        if value is None:
            return
        value = float(chainer.backend.CpuDevice().send(
            getattr(value, 'array', value)))
        if value > self.best:
            self.best = value
            self.save(value)

    def serialize(self, serializer):
        self.best = float(serializer('best', self.best))


class EpochOrIntervalTrigger:
    """Fires at every epoch end and every ``interval`` iterations (0: only
    at epoch ends), so each log entry that closes an epoch carries that
    epoch's validation results."""

    def __init__(self, interval):
        self.interval = interval

    def __call__(self, trainer):
        updater = trainer.updater
        return updater.is_new_epoch or bool(
            self.interval and updater.iteration % self.interval == 0)


SNAPSHOT_PREFIX = 'snapshot_iter_'


def latest_snapshot(directory):
    """Path of the snapshot with the highest iteration, or ``None``."""
    best = None
    if os.path.isdir(directory):
        for name in os.listdir(directory):
            number = name[len(SNAPSHOT_PREFIX):]
            if name.startswith(SNAPSHOT_PREFIX) and number.isdigit():
                if best is None or int(number) > best[0]:
                    best = (int(number), name)
    return os.path.join(directory, best[1]) if best else None
