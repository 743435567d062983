"""finetune.common.gpu without a GPU: pip CUDA libraries are loaded by path, and
``--gpu`` fails with one line instead of a CuPy traceback.

None of these is GPU evidence: CuPy here is absent or a fake one (the tests
that use a fake say so in their names). The GPU tests are tests/test_gpu.py,
marked ``gpu`` (``pytest -m gpu`` on a GPU machine)."""
import ctypes.util
import os
import shutil
import subprocess
import sys
import textwrap
import types

import chainer
import numpy as np
import pytest

from finetune.common import gpu
from finetune.common.errors import FinetuneError

no_gpu = pytest.mark.skipif(gpu.usable_device_count() > 0,
                            reason='a CUDA device is usable here')
#: why --gpu 0 fails here: no CuPy at all, or CuPy without a driver
NO_GPU_REASON = ('CUDA is not usable' if chainer.backends.cuda.available
                 else 'CuPy is not usable')


def real_library(name):
    """Path of a system shared library (e.g. 'z'), to copy under other
    names: a real ELF file the loader cannot find by those names."""
    soname = ctypes.util.find_library(name)
    for folder in ('/lib/x86_64-linux-gnu', '/usr/lib/x86_64-linux-gnu',
                   '/lib64', '/usr/lib64', '/lib', '/usr/lib'):
        if soname and os.path.exists(os.path.join(folder, soname)):
            return os.path.join(folder, soname)
    pytest.skip('no lib%s found' % name)


def pip_layout(root, folder, soname, source):
    """root/nvidia/<folder>/lib/<soname>, a copy of ``source``, with
    nvidia/__init__.py as the cudnn and curand wheels have it."""
    lib = root / 'nvidia' / folder / 'lib'
    lib.mkdir(parents=True, exist_ok=True)
    (root / 'nvidia' / '__init__.py').write_text('')
    shutil.copy(source, lib / soname)
    return str(lib / soname)


def mapped(path):
    return path in open('/proc/self/maps').read()


def test_cpu_device_is_numpy():
    assert gpu.device(-1).xp is np


def test_preload_loads_pip_libraries_by_path_from_any_site_folder(tmp_path):
    libz = real_library('z')
    first, second = tmp_path / 'site1', tmp_path / 'site2'
    a = pip_layout(first, 'fake_a', 'libfinetune_fake_a.so.1', libz)
    # a second site folder with its own nvidia/ package (e.g. user site)
    b = pip_layout(second, 'fake_b', 'libfinetune_fake_b.so.1', libz)
    libraries = (('fake_a', 'libfinetune_fake_a.so.1'),
                 ('fake_b', 'libfinetune_fake_b.so.1'),
                 ('absent', 'libfinetune_absent.so.1'))
    loaded, errors = gpu.preload_pip_cuda_libraries(
        libraries, path=[str(first), str(second)],
        probe='libfinetune_no_toolkit.so.1')
    assert loaded == [a, b] and errors == []
    assert mapped(a) and mapped(b)


def test_preload_leaves_everything_to_a_toolkit_the_loader_finds(tmp_path):
    lib = pip_layout(tmp_path, 'fake', 'libfinetune_fake_c.so.1',
                     real_library('z'))
    loaded, errors = gpu.preload_pip_cuda_libraries(
        (('fake', 'libfinetune_fake_c.so.1'),), path=[str(tmp_path)],
        probe=os.path.basename(real_library('z')))
    assert (loaded, errors) == ([], [])
    assert not mapped(lib)


def test_preload_reports_a_library_that_fails_to_load(tmp_path):
    lib = tmp_path / 'nvidia' / 'fake' / 'lib'
    lib.mkdir(parents=True)
    (lib / 'libfinetune_broken.so.1').write_bytes(b'not an ELF file')
    loaded, errors = gpu.preload_pip_cuda_libraries(
        (('fake', 'libfinetune_broken.so.1'),), path=[str(tmp_path)],
        probe='libfinetune_no_toolkit.so.1')
    assert loaded == []
    assert len(errors) == 1 and errors[0].startswith(
        'libfinetune_broken.so.1: ')


def test_import_without_cupy_preloads_nothing(monkeypatch):
    real = gpu.importlib.util.find_spec
    monkeypatch.setattr(gpu.importlib.util, 'find_spec',
                        lambda name, *a: None if name == 'cupy'
                        else real(name, *a))
    calls = []
    monkeypatch.setattr(gpu, 'preload_pip_cuda_libraries',
                        lambda *a: calls.append(a) or ([], []))
    gpu.preload_at_import()
    assert calls == []


def run_python(code, pythonpath):
    env = dict(os.environ, PYTHONPATH=str(pythonpath))
    env.pop('LD_LIBRARY_PATH', None)
    result = subprocess.run([sys.executable, '-c', textwrap.dedent(code)],
                            env=env, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    return result.stdout


def fake_cupy(root):
    """An importable-looking cupy whose import fails like a wheel's
    without its CUDA libraries."""
    (root / 'cupy').mkdir()
    (root / 'cupy' / '__init__.py').write_text(
        'raise ImportError("libcublas.so.12: cannot open shared object")\n')


def toolkit_on_loader_path():
    """Whether a fresh process (as run_python starts it) finds a CUDA
    toolkit by name; then the preload rightly leaves everything to it."""
    env = dict(os.environ)
    env.pop('LD_LIBRARY_PATH', None)
    return subprocess.run(
        [sys.executable, '-S', '-c', 'import ctypes; ctypes.CDLL(%r)'
         % gpu.TOOLKIT_PROBE], env=env, capture_output=True).returncode == 0


needs_no_toolkit = pytest.mark.skipif(
    toolkit_on_loader_path(), reason='a CUDA toolkit is on the loader path')


@needs_no_toolkit
def test_import_finetune_preloads_pip_cuda_libraries_for_a_fake_cupy(tmp_path):
    fake_cupy(tmp_path)
    lib = pip_layout(tmp_path, 'cublas', 'libcublasLt.so.12',
                     real_library('z'))
    out = run_python('''
        import finetune
        print(%r in open('/proc/self/maps').read())
    ''' % lib, tmp_path)
    assert out.split() == ['True']


@needs_no_toolkit
def test_a_fake_cupy_imported_by_chainer_first_is_named_in_the_error(tmp_path):
    fake_cupy(tmp_path)
    pip_layout(tmp_path, 'cublas', 'libcublasLt.so.12', real_library('z'))
    out = run_python('''
        import chainer
        import finetune
        try:
            finetune.common.gpu.device(0)
        except finetune.FinetuneError as e:
            print(e)
    ''', tmp_path)
    assert out.startswith('--device 0: CuPy is not usable (libcublas.so.12')
    assert 'import finetune first' in out


@no_gpu
def test_gpu_without_cuda_is_one_line_error():
    with pytest.raises(FinetuneError) as error:
        gpu.device(0)
    message = str(error.value)
    assert message.startswith('--device 0: ' + NO_GPU_REASON)
    assert '\n' not in message


def fake_device_count(monkeypatch, count):
    """CuPy as chainer sees it, with ``count`` devices (an exception
    instance: getDeviceCount raises it)."""
    def get_device_count():
        if isinstance(count, Exception):
            raise count
        return count
    runtime = types.SimpleNamespace(getDeviceCount=get_device_count)
    cupy = types.SimpleNamespace(cuda=types.SimpleNamespace(runtime=runtime))
    cuda = chainer.backends.cuda
    monkeypatch.setattr(cuda, 'available', True)
    monkeypatch.setattr(cuda, 'cupy', cupy, raising=False)


def test_a_fake_one_device_cupy_refuses_gpu_1_in_one_line(monkeypatch):
    fake_device_count(monkeypatch, 1)
    with pytest.raises(FinetuneError,
                       match=r'^--gpu 1 \(rank 1: GPU 1\): this machine has '
                             r'1 CUDA device\(s\)$'):
        gpu.device(1, '--gpu 1 (rank 1: GPU 1)')


def test_a_fake_cupy_without_a_driver_is_one_line_error(monkeypatch):
    fake_device_count(monkeypatch, RuntimeError(
        'cudaErrorInsufficientDriver: CUDA driver version is\ninsufficient'))
    with pytest.raises(FinetuneError) as error:
        gpu.device(0)
    assert str(error.value) == (
        '--device 0: CUDA is not usable (cudaErrorInsufficientDriver: CUDA '
        'driver version is insufficient); it needs an NVIDIA driver for '
        'CUDA 12 or newer')


@no_gpu
@pytest.mark.parametrize('tool', ['train', 'predict'])
def test_cli_gpu_without_cuda_exits_with_one_line(digits, tmp_path, tool):
    data, pretrained = digits
    args = {'train': ['--data', data, '--pretrained', pretrained,
                      '--out', str(tmp_path / 'out')],
            'predict': ['--model', pretrained, data]}[tool]
    result = subprocess.run(
        [sys.executable, '-m', 'finetune.' + tool, '--gpu', '0'] + args,
        capture_output=True, text=True, timeout=300)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and '--device 0: ' + NO_GPU_REASON in lines[0]
