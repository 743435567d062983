"""Shared helpers of the benchmark scripts (not part of the package).

Import order matters: call :func:`setup_threads` before NumPy, Chainer,
PyTorch or OpenCV are imported, so that every BLAS/OpenMP runtime sees the
same thread count.
"""
import os
import platform
import statistics
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
DEPLOY = os.path.join(ROOT, 'models', 'zoo', 'bvlc_alexnet_deploy.prototxt')
DATA = os.path.join(ROOT, 'tests', 'assets')

THREAD_VARS = ('OMP_NUM_THREADS', 'MKL_NUM_THREADS', 'OPENBLAS_NUM_THREADS')
OPENBLAS_TUNING_VARS = ('OPENBLAS_CORETYPE', 'OPENBLAS_L2_SIZE')

# Multiply-accumulates of BVLC AlexNet per 227x227 image, by layer
# (out_channels * in_channels/groups * kh * kw * out_h * out_w, or in*out).
ALEXNET_MACS = {
    'conv1': 96 * 3 * 11 * 11 * 55 * 55,
    'conv2': 256 * 48 * 5 * 5 * 27 * 27,
    'conv3': 384 * 256 * 3 * 3 * 13 * 13,
    'conv4': 384 * 192 * 3 * 3 * 13 * 13,
    'conv5': 256 * 192 * 3 * 3 * 13 * 13,
    'fc6': 9216 * 4096,
    'fc7': 4096 * 4096,
    'fc8': 4096 * 1000,
}
FORWARD_GFLOP = 2 * sum(ALEXNET_MACS.values()) / 1e9          # 1.449
# Full step: forward + weight gradients of all layers + input gradients of
# all layers but conv1.
TRAIN_GFLOP = FORWARD_GFLOP * 2 + (FORWARD_GFLOP -
                                   2 * ALEXNET_MACS['conv1'] / 1e9)
# Frozen trunk: forward + weight gradients of fc6-fc8 + input gradients of
# fc7, fc8 (fc6's input gradient is useless).
_HEAD = sum(ALEXNET_MACS[n] for n in ('fc6', 'fc7', 'fc8'))
FROZEN_GFLOP = FORWARD_GFLOP + 2 * (_HEAD + ALEXNET_MACS['fc7'] +
                                    ALEXNET_MACS['fc8']) / 1e9


def setup_threads(threads, unset_openblas_tuning=False):
    """Set the thread variables for every runtime; returns what was done.

    Must run before NumPy is imported.
    """
    if 'numpy' in sys.modules:
        raise RuntimeError('setup_threads must run before numpy is imported')
    for name in THREAD_VARS:
        os.environ[name] = str(threads)
    removed = {}
    if unset_openblas_tuning:
        for name in OPENBLAS_TUNING_VARS:
            if name in os.environ:
                removed[name] = os.environ.pop(name)
    return removed


def framework_threads(threads):
    """Import PyTorch and OpenCV and give each ``threads`` threads (their
    own settings, beside :func:`setup_threads`' variables); returns the
    modules (torch, cv2)."""
    import cv2
    import torch
    torch.set_num_threads(threads)
    cv2.setNumThreads(threads)
    return torch, cv2


def blas_info():
    """One line per BLAS/OpenMP runtime loaded (threadpoolctl)."""
    try:
        import threadpoolctl
    except ImportError:
        return ['threadpoolctl not installed']
    lines = []
    for info in threadpoolctl.threadpool_info():
        lines.append('%s %s %s threads=%s arch=%s (%s)' % (
            info.get('user_api'), info.get('internal_api'),
            info.get('version'), info.get('num_threads'),
            info.get('architecture', '-'),
            os.path.basename(info.get('filepath', ''))))
    return lines


def environment_report(threads, removed):
    """Lines describing the machine and the settings of this run."""
    import numpy
    lines = ['date: %s' % time.strftime('%Y-%m-%d %H:%M:%S %Z'),
             'python %s, numpy %s, %s' % (platform.python_version(),
                                          numpy.__version__,
                                          platform.platform()),
             'cpu: %s, %d logical cores, load average %.2f %.2f %.2f'
             % ((cpu_model(), os.cpu_count()) + os.getloadavg()),
             'threads: %s = %d for every framework' % (
                 '/'.join(THREAD_VARS), threads)]
    for name in OPENBLAS_TUNING_VARS:
        if name in removed:
            lines.append('%s was %r: unset for this run' % (name,
                                                           removed[name]))
        elif name in os.environ:
            lines.append('%s=%r (kept)' % (name, os.environ[name]))
    lines += ['blas: ' + line for line in blas_info()]
    return lines


def cpu_model():
    try:
        with open('/proc/cpuinfo') as f:
            for line in f:
                if line.startswith('model name'):
                    return line.split(':', 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or 'unknown'


def median(values):
    return statistics.median(values)


def interleaved(fns, rounds, warmup=1, pause=0.05):
    """Time each callable of ``fns`` (name -> fn) once per round, rounds
    interleaved so that drifts of a noisy machine hit all alike.

    ``pause`` seconds of sleep precede each timed call, so that the
    previous framework's spinning worker threads (OpenBLAS, OpenMP) are
    idle when the next one starts.

    ``warmup`` is the number of untimed calls per callable, or a dict
    name -> count. Returns name -> dict(times=[s...], utime, stime, minflt)
    where the rusage figures are the per-call medians of the timed calls.
    """
    import resource
    for name, fn in fns.items():
        count = warmup.get(name, 1) if isinstance(warmup, dict) else warmup
        for _ in range(count):
            fn()
    out = {name: dict(times=[], utime=[], stime=[], minflt=[])
           for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            time.sleep(pause)
            r0 = resource.getrusage(resource.RUSAGE_SELF)
            t0 = time.perf_counter()
            fn()
            t1 = time.perf_counter()
            r1 = resource.getrusage(resource.RUSAGE_SELF)
            rec = out[name]
            rec['times'].append(t1 - t0)
            rec['utime'].append(r1.ru_utime - r0.ru_utime)
            rec['stime'].append(r1.ru_stime - r0.ru_stime)
            rec['minflt'].append(r1.ru_minflt - r0.ru_minflt)
    for rec in out.values():
        for key in ('utime', 'stime', 'minflt'):
            rec[key] = median(rec[key])
    return out


def paired_ratio(recs, a, b):
    """Median over rounds of time(b) / time(a): the rate ratio a/b from
    calls made back to back, so that slow spells of a shared machine
    cancel out."""
    return median([tb / ta for ta, tb in zip(recs[a]['times'],
                                              recs[b]['times'])])


def rate(rec, batch):
    """Images/s from the median time of ``interleaved``'s record."""
    return batch / median(rec['times'])


def chainer_forward_fn(net, x):
    """A call of ``net`` on ``x`` in inference mode, without a graph."""
    import chainer

    def run():
        with chainer.using_config('train', False), \
                chainer.no_backprop_mode():
            return net(x).array
    return run


def cli_heap_report(apply):
    """Apply finetune's keep_freed_memory() when ``apply``; the line that
    says which heap setting the run measures."""
    if not apply:
        return ['heap: glibc defaults (library use; the CLIs apply '
                'keep_freed_memory(): --cli-heap)']
    from finetune.common.allocator import keep_freed_memory
    return ['heap: keep_freed_memory() %s for the whole process (the '
            "CLIs' setting; every framework)"
            % ('applied' if keep_freed_memory() else 'NOT applied: not glibc')]


def without_cpu_kernels(fn):
    """``fn`` run with Chainer's own functions instead of the project's CPU
    kernels (finetune.models.cpu_kernels): main's code before they came.
    None when this version of finetune has no such kernels."""
    try:
        from finetune.models.cpu_kernels import chainer_functions
    except ImportError:
        return None

    def run():
        with chainer_functions():
            return fn()
    return run


def torch_forward_fn(net, x):
    """A call of the PyTorch module ``net`` on ``x`` in eval mode."""
    import torch
    xt = torch.from_numpy(x)
    net.eval()

    def run():
        with torch.no_grad():
            return net(xt).numpy()
    return run


def table(headers, rows, title=None):
    """A plain-text table (list of lines); floats get 3 significant-ish
    digits."""
    def fmt(v):
        if isinstance(v, float):
            if v != v:
                return '-'
            if abs(v) >= 100:
                return '%.0f' % v
            if abs(v) >= 10:
                return '%.1f' % v
            return '%.2f' % v
        return str(v)
    cells = [[fmt(v) for v in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h)
              for i, h in enumerate(headers)]
    lines = [] if title is None else [title]
    lines.append('  '.join(h.rjust(w) for h, w in zip(headers, widths)))
    lines.append('  '.join('-' * w for w in widths))
    for r in cells:
        lines.append('  '.join(c.rjust(w) for c, w in zip(r, widths)))
    return lines


def emit(lines):
    for line in lines:
        print(line)
    sys.stdout.flush()


def matmul_peak(sizes=(2048, 4096), repeat=5):
    """Measured float32 GEMM rate (GFLOP/s): numpy (its BLAS) and torch.mm.

    Returns dict: (library, n) -> median GFLOP/s and 'peak' -> the best
    median, the figure "fraction of peak" is relative to.
    """
    import numpy as np
    result = {}
    rng = np.random.RandomState(0)
    for n in sizes:
        a = rng.rand(n, n).astype(np.float32)
        b = rng.rand(n, n).astype(np.float32)
        fns = {'numpy': lambda: a @ b}
        try:
            import torch
            ta, tb = torch.from_numpy(a), torch.from_numpy(b)
            fns['torch'] = lambda: torch.mm(ta, tb)
        except ImportError:
            pass
        recs = interleaved(fns, repeat)
        for lib, rec in recs.items():
            result[(lib, n)] = 2 * n ** 3 / median(rec['times']) / 1e9
    result['peak'] = max(result.values())
    return result
