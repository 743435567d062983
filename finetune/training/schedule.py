"""Learning-rate schedules of a run (``--lr-schedule``).

``step``: Chainer's ``ExponentialShift`` every ``--lr-step`` epochs
(Caffe's ``lr_policy: "step"``; no change with ``--lr-step 0``).
``cosine``: :class:`CosineShift` (Chainer 7 ships no cosine extension),
half a cosine from ``--lr`` down to 0 over the epochs after the head
warm-up (``--warmup-epochs``; the warm-up runs at ``--lr``), as SGDR
without restarts and fastai's ``fine_tune`` anneal.
"""
import math

from chainer.training import extension
from chainer.training import extensions


def cosine_lr(base_lr, epoch_detail, start_epoch, end_epoch):
    """``base_lr * (1 + cos(pi * t)) / 2`` with ``t`` the fraction of
    ``[start_epoch, end_epoch]`` done at ``epoch_detail`` (clipped to [0,
    1]): ``base_lr`` before ``start_epoch``, 0 at ``end_epoch``."""
    span = end_epoch - start_epoch
    done = 1.0 if span <= 0 else (epoch_detail - start_epoch) / span
    done = min(max(done, 0.0), 1.0)
    return base_lr * 0.5 * (1.0 + math.cos(math.pi * done))


class CosineShift(extension.Extension):
    """Sets the optimizer's ``lr`` to :func:`cosine_lr` of the updater's
    ``epoch_detail`` before every iteration's update is counted (called
    after each iteration and once before training). It keeps no state:
    the value is a function of the iteration a snapshot restores, so a
    resumed run follows the same rates.

    Args:
        base_lr (float): the rate at and before ``start_epoch``.
        start_epoch, end_epoch (float): where the decay starts and where
            the rate reaches 0.
    """

    trigger = (1, 'iteration')
    invoke_before_training = True

    def __init__(self, base_lr, start_epoch, end_epoch):
        self.base_lr = base_lr
        self.start_epoch = start_epoch
        self.end_epoch = end_epoch

    def initialize(self, trainer):
        self(trainer)

    def __call__(self, trainer):
        updater = trainer.updater
        updater.get_optimizer('main').lr = cosine_lr(
            self.base_lr, updater.epoch_detail, self.start_epoch,
            self.end_epoch)


def add_lr_schedule(trainer, schedule, base_lr):
    """Extend ``trainer`` with the learning-rate schedule of ``schedule``
    (a :class:`~finetune.training.config.ScheduleOptions`, e.g.
    ``config.schedule``; see the module docstring) from ``base_lr``
    (``--lr``)."""
    if schedule.lr_schedule == 'cosine':
        trainer.extend(CosineShift(base_lr, schedule.warmup_epochs,
                                   schedule.epochs), name='cosine_shift')
    elif schedule.lr_step:
        trainer.extend(extensions.ExponentialShift('lr', schedule.lr_gamma),
                       trigger=(schedule.lr_step, 'epoch'))
