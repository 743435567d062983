"""The asynchronous parallel loader: Chainer iterators, set up safely.

``MultiprocessIterator`` decodes and augments batches in worker processes
with prefetch. With the default ``fork`` start method it can deadlock
(threads and locks copied into children), so workers are started with
``forkserver``. Callers must ``finalize()`` the iterator (``with`` or
``try/finally``) so workers stop on errors and Ctrl-C.
"""
import multiprocessing

import chainer


def make_iterator(dataset, batch_size, loaderjob, repeat=True, shuffle=True,
                  n_prefetch=2, seed=None):
    """Return an iterator over ``dataset`` batches.

    Args:
        loaderjob (int): worker processes; 0 loads in this process
            (``SerialIterator``: simplest to debug, no parallelism).
        n_prefetch (int): batches each worker pool prepares ahead.
        seed (int): fixes the shuffling order (``SerialIterator`` only;
            ``MultiprocessIterator`` shuffles with NumPy's global RNG).
    """
    if loaderjob <= 0:
        order = None
        if shuffle and seed is not None:
            order = chainer.iterators.ShuffleOrderSampler(
                __import__('numpy').random.RandomState(seed))
        return chainer.iterators.SerialIterator(
            dataset, batch_size, repeat=repeat,
            shuffle=None if order else shuffle, order_sampler=order)
    use_forkserver()
    return chainer.iterators.MultiprocessIterator(
        dataset, batch_size, repeat=repeat, shuffle=shuffle,
        n_processes=loaderjob, n_prefetch=n_prefetch)


def use_forkserver():
    """Make new worker processes start from a clean forkserver."""
    if multiprocessing.get_start_method(allow_none=True) != 'forkserver':
        multiprocessing.set_start_method('forkserver', force=True)
