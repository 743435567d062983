"""The GPU on current CUDA: CUDA libraries from pip, one-line errors.

Chainer 7.8.1 decides once, when it is imported, whether CuPy is usable: it
imports ``cupy.cuda.cublas``, ``cupyx.scipy.linalg`` and ``cupy.cudnn``,
and on any failure reports "CuPy: Not Available" and fails later at
``--gpu``. CuPy 13 (the last line that runs with NumPy < 2, which chainer
needs) has every name chainer 7.8.1 calls (scripts/gpu_stack_check.py,
README "GPU and scaling out"), but its ``cupy-cuda12x`` wheel does not
carry the CUDA libraries. Installed from pip (``nvidia-cublas-cu12``, ...), they land in
``site-packages/nvidia/<name>/lib``, where the dynamic loader does not look.
:func:`preload_pip_cuda_libraries` loads them by path before chainer is
imported, so CuPy's later loads by name find them; a CUDA toolkit found by
the loader is preferred.
"""
import ctypes
import importlib.util
import os
import sys

from finetune.errors import FinetuneError

#: (pip package folder under nvidia/, soname), in dependency order: what
#: CuPy 13's extension modules load by name (libcublas has no RUNPATH, so
#: its libcublasLt comes first).
PIP_CUDA_LIBRARIES = (
    ('cublas', 'libcublasLt.so.12'), ('cublas', 'libcublas.so.12'),
    ('nvjitlink', 'libnvJitLink.so.12'), ('cusparse', 'libcusparse.so.12'),
    ('cusolver', 'libcusolver.so.11'), ('curand', 'libcurand.so.10'),
    ('cufft', 'libcufft.so.11'), ('cuda_nvrtc', 'libnvrtc.so.12'),
    ('cudnn', 'libcudnn.so.8'), ('nccl', 'libnccl.so.2'),
)

#: chainer was imported before finetune, so the preload came too late
_chainer_imported_first = False

GPU_HELP = ("see README 'GPU and scaling out': pip install "
            "--no-build-isolation -e '.[gpu]' (cupy-cuda12x 13 with the "
            'CUDA 12 libraries)')


def _pip_nvidia_dir():
    """site-packages/nvidia, or None when no nvidia-* wheel is installed."""
    spec = importlib.util.find_spec('nvidia')
    if spec is None or not spec.submodule_search_locations:
        return None
    return list(spec.submodule_search_locations)[0]


def preload_pip_cuda_libraries():
    """Load the pip-installed CUDA libraries that the system loader cannot
    find, before chainer/CuPy look for them by name.

    A no-op without CuPy or without nvidia-* wheels. Returns the paths
    loaded here (libraries the loader already finds are left to it).
    """
    global _chainer_imported_first
    if importlib.util.find_spec('cupy') is None:
        return []
    _chainer_imported_first = 'chainer' in sys.modules
    root = _pip_nvidia_dir()
    if root is None:
        return []
    loaded = []
    for folder, soname in PIP_CUDA_LIBRARIES:
        path = os.path.join(root, folder, 'lib', soname)
        if not os.path.exists(path):
            continue
        try:
            ctypes.CDLL(soname, mode=ctypes.RTLD_GLOBAL)
            continue  # a system (toolkit) copy is found: use it
        except OSError:
            pass
        try:
            ctypes.CDLL(path, mode=ctypes.RTLD_GLOBAL)
            loaded.append(path)
        except OSError:
            pass  # CuPy reports what is missing; device() says so
    return loaded


def device(gpu):
    """Chainer device for GPU number ``gpu`` (``-1``: the CPU).

    Raises:
        FinetuneError: CuPy is not usable, with chainer's reason (e.g.
            ``libcublas.so.12: cannot open shared object file``), or there
            is no CUDA device ``gpu`` (no driver, no such device).
    """
    import chainer  # after preload_pip_cuda_libraries (finetune/__init__)
    if gpu < 0:
        return chainer.get_device('@numpy')
    cuda = chainer.backends.cuda
    if not cuda.available:
        reason = _one_line(getattr(cuda, '_resolution_error', None))
        if _chainer_imported_first:
            reason += ('; chainer was imported before finetune, so the pip '
                       'CUDA libraries were not loaded: import finetune '
                       'first')
        raise FinetuneError('--gpu %d: CuPy is not usable (%s); %s' % (
            gpu, reason or 'cupy is not installed', GPU_HELP))
    try:
        count = cuda.cupy.cuda.runtime.getDeviceCount()
    except Exception as e:  # CUDARuntimeError: no driver, no device
        raise FinetuneError('--gpu %d: no CUDA device (%s)' % (
            gpu, _one_line(e)))
    if gpu >= count:
        raise FinetuneError('--gpu %d: this machine has %d CUDA device(s)'
                            % (gpu, count))
    return chainer.get_device('@cupy:%d' % gpu)


def usable_device_count():
    """Number of CUDA devices chainer can use (0 without CuPy or driver)."""
    import chainer
    if not chainer.backends.cuda.available:
        return 0
    try:
        return chainer.backends.cuda.cupy.cuda.runtime.getDeviceCount()
    except Exception:  # CUDARuntimeError: no driver
        return 0


def _one_line(error):
    """An exception (or None) as one line of text."""
    return ' '.join(str(error).split()) if error is not None else ''

