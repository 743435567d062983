"""The asynchronous parallel loader: Chainer iterators, set up safely.

``MultiprocessIterator`` decodes and augments batches in worker processes
with prefetch. With the default ``fork`` start method it can deadlock
(threads and locks copied into children), so workers are started with
``forkserver``. Callers must ``finalize()`` the iterator (``with`` or
``try/finally``) so workers stop on errors and Ctrl-C.
"""
import multiprocessing
import zlib

import chainer
import numpy as np


def make_iterator(dataset, batch_size, loaderjob, repeat=True, shuffle=True,
                  n_prefetch=2, seed=None):
    """Return an iterator over ``dataset`` batches.

    Args:
        loaderjob (int): worker processes; 0 loads in this process
            (``SerialIterator``: simplest to debug, no parallelism).
        n_prefetch (int): batches each worker pool prepares ahead.
        seed (int): with ``shuffle``, makes every epoch's order a function
            of the seed and the previous order (:class:`SeededOrderSampler`)
            so a resumed run sees the same batches as an uninterrupted one.
    """
    order = None
    if shuffle and seed is not None:
        order, shuffle = SeededOrderSampler(seed), None
    if loaderjob <= 0:
        return chainer.iterators.SerialIterator(
            dataset, batch_size, repeat=repeat, shuffle=shuffle,
            order_sampler=order)
    use_forkserver()
    return chainer.iterators.MultiprocessIterator(
        dataset, batch_size, repeat=repeat, shuffle=shuffle,
        n_processes=loaderjob, n_prefetch=n_prefetch, order_sampler=order)


class SeededOrderSampler(chainer.iterators.OrderSampler):
    """Shuffles each epoch from the seed and the previous epoch's order.

    Chainer's ``ShuffleOrderSampler`` draws from a RandomState that
    snapshots do not save, so a resumed run would see new orders. Here the
    next order depends only on the current one (which iterators serialize)
    and the seed.
    """

    def __init__(self, seed):
        self.seed = seed

    def __call__(self, current_order, current_position):
        digest = zlib.crc32(np.asarray(current_order, np.int64).tobytes())
        rng = np.random.RandomState((digest ^ self.seed) & 0xFFFFFFFF)
        return rng.permutation(len(current_order))


#: What the forkserver imports once before it forks any worker (besides
#: the main module, multiprocessing's default): the workers then share
#: Chainer's pages with it instead of each importing its own copy
#: (benchmarks/bench_memory.py: 40 MB less proportional memory for two
#: workers, 20 MB less resident in each).
WORKER_PRELOAD = ('__main__', 'chainer.iterators.multiprocess_iterator',
                  'finetune.data.datasets', 'finetune.data.feature_cache')


def use_forkserver():
    """Make new worker processes start from a clean forkserver that has
    imported :data:`WORKER_PRELOAD`."""
    if multiprocessing.get_start_method(allow_none=True) != 'forkserver':
        multiprocessing.set_start_method('forkserver', force=True)
    multiprocessing.set_forkserver_preload(list(WORKER_PRELOAD))
