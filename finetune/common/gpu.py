"""The GPU on current CUDA: CUDA libraries from pip, one-line errors.

Chainer 7.8.1 decides once, when it is imported, whether CuPy is usable: it
imports ``cupy.cuda.cublas``, ``cupyx.scipy.linalg`` and ``cupy.cudnn``,
and on any failure reports "CuPy: Not Available" and fails later at
``--gpu``. CuPy 13 (the last line that runs with NumPy < 2, which chainer
needs) has every name chainer 7.8.1 calls (scripts/gpu_stack_check.py,
README "GPU and scaling out"), but its ``cupy-cuda12x`` wheel does not
carry the CUDA libraries. Installed from pip (``nvidia-cublas-cu12``, ...),
they land in ``site-packages/nvidia/<name>/lib``, where the dynamic loader
does not look. ``import finetune`` calls :func:`preload_at_import`, which
loads them by path before chainer is imported, so CuPy's later loads by
name find them. A CUDA toolkit the loader finds is used instead, for all
libraries at once, so the two are never mixed.
"""
import ctypes
import importlib.util
import os
import sys

from finetune.common.errors import FinetuneError
from finetune.common.errors import one_line

#: (folder under nvidia/, soname) of the libraries CuPy 13 loads by name,
#: dependencies first (libcublas needs libcublasLt; the wheels' RUNPATHs
#: would find it too).
PIP_CUDA_LIBRARIES = (
    ('cublas', 'libcublasLt.so.12'), ('cublas', 'libcublas.so.12'),
    ('nvjitlink', 'libnvJitLink.so.12'), ('cusparse', 'libcusparse.so.12'),
    ('cusolver', 'libcusolver.so.11'), ('curand', 'libcurand.so.10'),
    ('cufft', 'libcufft.so.11'), ('cuda_nvrtc', 'libnvrtc.so.12'),
    ('cudnn', 'libcudnn.so.8'), ('nccl', 'libnccl.so.2'),
)

#: a library whose presence on the loader's path means a CUDA toolkit
TOOLKIT_PROBE = 'libcublas.so.12'

GPU_HELP = ("see README 'GPU and scaling out': pip install "
            "--no-build-isolation -e '.[gpu]' (cupy-cuda12x 13 with the "
            'CUDA 12 libraries)')

#: what ``import finetune`` did (set once, by preload_at_import)
_AT_IMPORT = {'errors': [], 'after_chainer': False}


def find_pip_library(folder, soname, path=None):
    """``<entry>/nvidia/<folder>/lib/<soname>`` for the first entry of
    ``path`` (default ``sys.path``) that has it, else None. Every entry is
    looked at, since wheels may be spread over several site folders."""
    for entry in sys.path if path is None else path:
        candidate = os.path.join(entry or '.', 'nvidia', folder, 'lib',
                                 soname)
        if os.path.isfile(candidate):
            return candidate
    return None


def loader_finds(soname):
    """True when the dynamic loader finds ``soname`` by name (it is then
    loaded, as CuPy would load it anyway)."""
    try:
        ctypes.CDLL(soname, mode=ctypes.RTLD_GLOBAL)
        return True
    except OSError:
        return False


def preload_pip_cuda_libraries(libraries=PIP_CUDA_LIBRARIES, path=None,
                               probe=TOOLKIT_PROBE):
    """Load pip-installed CUDA libraries by path, before chainer/CuPy look
    for them by name.

    Nothing is loaded when the loader finds ``probe`` (a CUDA toolkit or
    LD_LIBRARY_PATH: it is used for every library) or when no library of
    ``libraries`` is installed.

    Returns:
        (loaded, errors): the paths loaded here and one line per library
        that is installed but failed to load.
    """
    found = [(soname, find_pip_library(folder, soname, path))
             for folder, soname in libraries]
    found = [(soname, lib) for soname, lib in found if lib]
    if not found or loader_finds(probe):
        return [], []
    loaded, errors = [], []
    for soname, lib in found:
        try:
            ctypes.CDLL(lib, mode=ctypes.RTLD_GLOBAL)
            loaded.append(lib)
        except OSError as e:
            errors.append('%s: %s' % (soname, one_line(e)))
    return loaded, errors


def preload_at_import():
    """What ``import finetune`` runs: the preload when CuPy is installed,
    remembering whether chainer had already been imported (then it came
    too late: chainer had decided without the libraries)."""
    if importlib.util.find_spec('cupy') is None:
        return
    loaded, errors = preload_pip_cuda_libraries()
    _AT_IMPORT.update(errors=errors,
                      after_chainer=bool(loaded) and 'chainer' in sys.modules)


def _unusable_reason(cuda):
    """Why chainer finds CuPy unusable, with what the preload saw."""
    reason = one_line(getattr(cuda, '_resolution_error', None))
    reason = reason or 'cupy is not installed'
    if _AT_IMPORT['errors']:
        reason += '; could not load ' + ', '.join(_AT_IMPORT['errors'])
    if _AT_IMPORT['after_chainer']:
        reason += ('; chainer was imported before finetune, so the pip '
                   'CUDA libraries were loaded too late: import finetune '
                   'first')
    return reason


def device(gpu, option=None):
    """Chainer device for GPU number ``gpu`` (``-1``: the CPU).

    Args:
        gpu (int): CUDA device number, or -1.
        option (str): how the user asked for it, for messages (default
            ``'--device <gpu>'``).

    Raises:
        FinetuneError: CuPy is not usable, with chainer's reason (e.g.
            ``libcublas.so.12: cannot open shared object file``), CUDA is
            not usable (no or too old a driver), or there is no device
            ``gpu``.
    """
    import chainer  # after preload_at_import (finetune/__init__)
    if gpu < 0:
        return chainer.get_device('@numpy')
    option = option or '--device %d' % gpu
    cuda = chainer.backends.cuda
    if not cuda.available:
        raise FinetuneError('%s: CuPy is not usable (%s); %s' % (
            option, _unusable_reason(cuda), GPU_HELP))
    try:
        count = cuda.cupy.cuda.runtime.getDeviceCount()
    except Exception as e:  # CUDARuntimeError: no driver, old driver
        raise FinetuneError('%s: CUDA is not usable (%s); it needs an '
                            'NVIDIA driver for CUDA 12 or newer'
                            % (option, one_line(e)))
    if gpu >= count:
        raise FinetuneError('%s: this machine has %d CUDA device(s)'
                            % (option, count))
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
