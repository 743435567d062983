"""Keep freed memory in the process, up to a bound: no page faults on every
batch, and no unbounded heap.

Chainer's CPU kernels allocate large temporaries (im2col buffers of
hundreds of MB) on every call. glibc returns blocks above its mmap
threshold to the OS when they are freed and page-faults them back in on the
next call, which costs as much system time as the arithmetic
(benchmarks/README.md: 1.8x Chainer forward throughput with this tuning).
So large blocks come from the heap, and the heap keeps up to ``keep_mb``
of free memory at its top for the next call; beyond that glibc gives it
back (a run's transient peak, such as loading a model, is not held for the
rest of the run). Measured (benchmarks/README.md, "Peak memory"): an
AlexNet training step at batch 32 spends 2.0 s of system time per step
untuned, 0.05 s kept without a bound and 0.05-0.13 s with 1 GiB (0.7-0.9 s
with 512 MiB); the peak RSS is the same in all four (1.39 GB).
"""
import ctypes
import ctypes.util

# mallopt parameters, from glibc's malloc.h
_M_TRIM_THRESHOLD = -1
_M_TOP_PAD = -2
_M_MMAP_THRESHOLD = -3


def keep_freed_memory(keep_mb=1024, top_pad_mb=64):
    """Tell glibc to serve large blocks from the heap and keep up to
    ``keep_mb`` MiB of freed memory there (the trim threshold), growing it
    ``top_pad_mb`` MiB at a time.

    Returns:
        bool: True when glibc accepted the settings; False elsewhere (not
        glibc), where nothing changes.
    """
    try:
        mallopt = ctypes.CDLL(ctypes.util.find_library('c') or
                              'libc.so.6').mallopt
    except (OSError, AttributeError):
        return False
    largest = ctypes.c_int(2 ** 31 - 1)
    results = [mallopt(_M_MMAP_THRESHOLD, largest),
               mallopt(_M_TRIM_THRESHOLD, ctypes.c_int(keep_mb << 20)),
               mallopt(_M_TOP_PAD, ctypes.c_int(top_pad_mb << 20))]
    return all(r == 1 for r in results)
