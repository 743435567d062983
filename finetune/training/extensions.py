"""Pieces the trainer is assembled from: loss, batches, extensions.

Everything random in a run is a function of the seed and state that
snapshots save: the batch order (:class:`finetune.data.loader.SeededOrderSampler`)
and, through :class:`SeededUpdater`, crops, mirrors and dropout, reseeded
from (seed, rank, iteration) before every step. Workers only decode and
resize. So a run killed and resumed ends with the same weights as one that
never stopped, and each rank of a multi-process run draws differently.
"""
import contextlib
import math
import os
import signal

import chainer
import chainer.functions as F
import numpy as np
from chainer.dataset import concat_examples
from chainer.training import extension
from chainer.training import extensions
from chainer.training.extensions import snapshot_writers

from finetune.common.cli import Preempted
from finetune.common.fileio import write_npz
from finetune.inference.predictor import top_k_accuracy


class Classifier(chainer.Chain):
    """Softmax cross-entropy with top-1/top-5 accuracy reported.

    Reports ``loss``, ``accuracy`` and ``top5`` (as ``main/...`` in
    training and ``validation/main/...`` in evaluation), each as a
    (batch mean, batch size) pair.
    """

    def __init__(self, predictor):
        super().__init__()
        with self.init_scope():
            self.predictor = predictor

    def forward(self, x, t):
        y = self.predictor(x)
        if y.dtype != np.float32:  # float16 logits: the loss in float32
            y = F.cast(y, np.float32)
        loss = F.softmax_cross_entropy(y, t)
        # weighted by the batch size, so an evaluation whose last batch is
        # short reports the accuracy over all images, not a mean of batch
        # means (Chainer's DictSummary takes (value, weight) pairs)
        n = len(t)
        chainer.report({'loss': (loss.array, n),
                        'accuracy': (F.accuracy(y, t).array, n),
                        'top5': (top_k_accuracy(y.array, t, 5), n)}, self)
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


def step_seed(seed, rank, iteration):
    """A 32-bit seed for one training step of one rank."""
    return int(np.random.SeedSequence([seed, rank, iteration])
               .generate_state(1)[0])


class SeededUpdater(chainer.training.StandardUpdater):
    """StandardUpdater that reseeds the crop generator and NumPy's global
    generator (Chainer's CPU dropout) from (seed, rank, iteration) before
    each step, so randomness needs no state in snapshots."""

    def __init__(self, iterator, optimizer, converter, device, seed=0,
                 rank=0):
        super().__init__(iterator, optimizer, converter=converter,
                         device=device)
        self.seed = seed
        self.rank = rank

    def update_core(self):
        key = step_seed(self.seed, self.rank, self.iteration)
        np.random.seed(key)
        self.converter.rng.seed(key ^ 0x5EED)
        super().update_core()


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


class EpochsOrTimeLimit:
    """Stop trigger: ``epochs`` epochs done, or ``seconds`` of training
    (``trainer.elapsed_time``, wall clock, resumed runs included) spent
    after at least one iteration; ``seconds`` 0 means no time limit. The
    progress bar shows the epochs.
    """

    def __init__(self, epochs, seconds=0):
        self.epochs = chainer.training.triggers.IntervalTrigger(epochs,
                                                                'epoch')
        self.seconds = seconds

    def __call__(self, trainer):
        if (self.seconds and trainer.updater.iteration
                and trainer.elapsed_time >= self.seconds):
            return True
        return self.epochs(trainer)

    def get_training_length(self):
        return self.epochs.get_training_length()

    def serialize(self, serializer):
        self.epochs.serialize(serializer['epochs'])


SNAPSHOT_PREFIX = 'snapshot_iter_'


class SnapshotWriter(snapshot_writers.Writer):
    """Writes trainer snapshots with :func:`~finetune.common.fileio.write_npz`
    straight onto their names (atomically) instead of Chainer's temporary
    folder, so a failed write (a full disk) names the snapshot in one line
    and leaves no half-written archive behind.

    Uncompressed: zlib saves ~7 % of float weights and takes 30x the time
    (AlexNet's weights and momentum: 11 s vs 0.4 s, 396 vs 425 MiB), at
    every epoch end.
    """

    def __call__(self, filename, outdir, target):
        write_npz(os.path.join(outdir, filename), target)
        self._post_save()  # removes the snapshots beyond --keep-snapshots


def trainer_snapshot(n_retains=None):
    """Chainer's trainer snapshot extension writing
    ``snapshot_iter_<iteration>`` through :class:`SnapshotWriter`, keeping
    the last ``n_retains`` (None: all)."""
    return extensions.snapshot(
        writer=SnapshotWriter(),
        filename=SNAPSHOT_PREFIX + '{.updater.iteration}',
        n_retains=n_retains)


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


class StopOnSigterm(extension.Extension):
    """Preemption: SIGTERM (what SLURM and Kubernetes send before a kill)
    stops training at the next iteration boundary with a snapshot.

    While :meth:`installed`, SIGTERM only sets a flag. After every
    iteration (after every other extension, the snapshot included) the
    ranks agree whether any of them got it (one small allreduce); if so
    rank 0 writes ``snapshot_iter_<iteration>`` with ``snapshot`` and every
    rank raises :class:`~finetune.common.cli.Preempted` (exit status
    :data:`~finetune.common.cli.PREEMPTED_STATUS`). ``--resume auto`` then
    continues bitwise as from any snapshot.

    Args:
        ranks: SingleProcess or MultiNode.
        snapshot: a trainer snapshot extension (only rank 0 calls it).
        out (str): the run's folder (named in the message).
    """

    trigger = (1, 'iteration')
    priority = -200  # after Chainer's snapshot (-100) and all the others

    def __init__(self, ranks, snapshot, out):
        self.ranks = ranks
        self.snapshot = snapshot
        self.out = out
        self.signalled = False

    def _handle(self, signum, frame):
        self.signalled = True

    @contextlib.contextmanager
    def installed(self):
        """SIGTERM sets the flag inside the ``with`` block."""
        previous = signal.signal(signal.SIGTERM, self._handle)
        try:
            yield self
        finally:
            signal.signal(signal.SIGTERM, previous)

    def __call__(self, trainer):
        if not self.ranks.any(self.signalled):
            return
        iteration = trainer.updater.iteration
        if not self.ranks.is_root:
            raise Preempted('')
        self.snapshot(trainer)
        raise Preempted(
            'terminated (SIGTERM): snapshot written at iteration %d (%s); '
            'continue with the same command and --resume auto' % (
                iteration, os.path.join(self.out, '%s%d' % (
                    SNAPSHOT_PREFIX, iteration))))


def add_training_extensions(trainer, output, inputs, device, ranks,
                            save_best, unfreeze=None):
    """The run's extension set but the learning-rate schedule
    (:func:`~finetune.training.schedule.add_lr_schedule`): evaluation and
    the ``--unfreeze`` warm-up (``unfreeze``, a
    :class:`~finetune.training.recipe.Unfreeze`) on every rank; logs,
    plots, progress bar, snapshots and the best model
    (``save_best(accuracy)``) on rank 0 only, at the intervals of
    ``output`` (a :class:`~finetune.training.config.OutputOptions`, e.g.
    ``config.output``)."""
    epoch = (1, 'epoch')
    log_trigger = EpochOrIntervalTrigger(output.log_interval)
    if inputs.val_iter is not None:
        trainer.extend(ranks.evaluator(extensions.Evaluator(
            inputs.val_iter, inputs.eval_model,
            converter=inputs.eval_converter, device=device)), trigger=epoch)
    if unfreeze is not None:
        trainer.extend(unfreeze, name='unfreeze')
    trainer.extend(extensions.FailOnNonNumber())
    if not ranks.is_root:
        return
    trainer.extend(extensions.observe_lr(), trigger=log_trigger)
    trainer.extend(extensions.LogReport(trigger=log_trigger))
    trainer.extend(extensions.PrintReport(
        ['epoch', 'iteration', 'main/loss', 'main/accuracy',
         'validation/main/loss', 'validation/main/accuracy',
         'validation/main/top5', 'lr', 'elapsed_time']), trigger=log_trigger)
    trainer.extend(extensions.ProgressBar(update_interval=1))
    if extensions.PlotReport.available():
        trainer.extend(extensions.PlotReport(
            ['main/loss', 'validation/main/loss'], 'epoch',
            file_name='loss.png'), trigger=epoch)
        trainer.extend(extensions.PlotReport(
            ['main/accuracy', 'validation/main/accuracy',
             'validation/main/top5'], 'epoch', file_name='accuracy.png'),
            trigger=epoch)
    trainer.extend(trainer_snapshot(output.keep_snapshots),
                   trigger=EpochOrIntervalTrigger(output.snapshot_interval))
    if inputs.val_iter is not None:
        trainer.extend(SaveBestModel(save_best))
