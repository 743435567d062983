"""--lr-schedule cosine against the formula, through a Chainer trainer."""
import math

import chainer
import numpy as np
from chainer import training

from finetune.training.schedule import CosineShift


def test_cosine_rates_follow_the_formula(tmp_path):
    model = chainer.links.Linear(2, 2)
    optimizer = chainer.optimizers.MomentumSGD(lr=0.1)
    optimizer.setup(model)
    data = chainer.datasets.TupleDataset(
        np.zeros((10, 2), np.float32), np.zeros(10, np.int32))
    it = chainer.iterators.SerialIterator(data, 4)
    updater = training.StandardUpdater(it, optimizer, loss_func=lambda x, t:
                                       chainer.functions.sum(model(x)) * 0)
    trainer = training.Trainer(updater, (6, 'epoch'), out=str(tmp_path))
    trainer.extend(CosineShift(0.1, 2, 6))
    seen = []
    trainer.extend(lambda t: seen.append((t.updater.epoch_detail,
                                          optimizer.lr)),
                   trigger=(1, 'iteration'), priority=-1000)
    trainer.run()
    for epoch, lr in seen:
        done = min(max((epoch - 2) / 4.0, 0), 1)
        assert math.isclose(lr, 0.05 * (1 + math.cos(math.pi * done)),
                            rel_tol=1e-12, abs_tol=1e-15)
    assert seen[0][1] == 0.1 and seen[-1][1] < 1e-15
