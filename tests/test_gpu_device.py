"""finetune.gpu on a machine without CUDA: pip CUDA libraries are loaded by
path, and ``--gpu`` fails with one line instead of a CuPy traceback."""
import ctypes.util
import importlib.util
import os
import shutil
import subprocess
import sys
import textwrap

import chainer
import numpy as np
import pytest

from finetune.errors import FinetuneError
from finetune.gpu import device
from finetune.gpu import usable_device_count

no_gpu = pytest.mark.skipif(usable_device_count() > 0,
                            reason='a CUDA device is usable here')
#: why --gpu 0 fails here: no CuPy at all, or CuPy without a driver/device
NO_GPU_REASON = ('no CUDA device' if chainer.backends.cuda.available
                 else 'CuPy is not usable')


def test_cpu_device_is_numpy():
    assert device(-1).xp is np


@no_gpu
def test_gpu_without_cuda_is_one_line_error():
    with pytest.raises(FinetuneError) as error:
        device(0)
    message = str(error.value)
    assert message.startswith('--gpu 0: ' + NO_GPU_REASON)
    assert '\n' not in message


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
    assert len(lines) == 1 and '--gpu 0: ' + NO_GPU_REASON in lines[0]


@pytest.mark.skipif(not chainer.backends.cuda.available,
                    reason='needs CuPy')
def test_gpu_beyond_the_device_count_is_one_line_error():
    count = usable_device_count()
    with pytest.raises(FinetuneError, match='--gpu %d: ' % count):
        device(count)


def test_importing_chainer_first_is_named_in_the_error(tmp_path):
    """With CuPy present but its libraries not loadable, a script that
    imported chainer before finetune is told to import finetune first."""
    (tmp_path / 'cupy').mkdir()
    (tmp_path / 'cupy' / '__init__.py').write_text(
        'raise ImportError("libcublas.so.12: cannot open shared object")\n')
    code = textwrap.dedent('''
        import chainer
        import finetune
        from finetune.gpu import device
        try:
            device(0)
        except finetune.FinetuneError as e:
            print(e)
    ''')
    env = dict(os.environ, PYTHONPATH=str(tmp_path))
    result = subprocess.run([sys.executable, '-c', code], env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert 'libcublas.so.12' in result.stdout
    assert 'import finetune first' in result.stdout


def fake_pip_cuda(root, library):
    """site-packages-like folder: an importable ``cupy`` and
    nvidia/cublas/lib/libcublasLt.so.12, a copy of a real shared library
    the dynamic loader cannot find by that name."""
    (root / 'cupy').mkdir()
    (root / 'cupy' / '__init__.py').write_text('raise ImportError\n')
    lib = root / 'nvidia' / 'cublas' / 'lib'
    lib.mkdir(parents=True)
    # a regular package, found before any real nvidia-* wheel's
    (root / 'nvidia' / '__init__.py').write_text('')
    shutil.copy(library, lib / 'libcublasLt.so.12')
    return lib / 'libcublasLt.so.12'


def real_library(name):
    """Path of a system shared library, found as the loader finds it."""
    soname = ctypes.util.find_library(name)
    for folder in ('/lib/x86_64-linux-gnu', '/usr/lib/x86_64-linux-gnu',
                   '/lib64', '/usr/lib64', '/lib', '/usr/lib'):
        if soname and os.path.exists(os.path.join(folder, soname)):
            return os.path.join(folder, soname)
    pytest.skip('no lib%s found' % name)


def test_import_loads_pip_cuda_libraries_by_path(tmp_path):
    library = fake_pip_cuda(tmp_path, real_library('z'))
    code = textwrap.dedent('''
        import finetune
        from finetune import gpu
        maps = open('/proc/self/maps').read()
        print(%r in maps)
        # a library the loader finds by name is left to it
        gpu.PIP_CUDA_LIBRARIES = (('cublas', 'libz.so.1'),)
        import os, shutil
        shutil.copy(%r, %r)
        print(gpu.preload_pip_cuda_libraries())
    ''') % (str(library), str(library),
            str(library.parent / 'libz.so.1'))
    env = dict(os.environ, PYTHONPATH=str(tmp_path))
    result = subprocess.run([sys.executable, '-c', code], env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split('\n')[:2] == ['True', '[]']


@pytest.mark.skipif(importlib.util.find_spec('cupy') is not None,
                    reason='CuPy is installed here')
def test_preload_is_a_no_op_without_cupy(tmp_path):
    library = fake_pip_cuda(tmp_path, real_library('z'))
    shutil.rmtree(tmp_path / 'cupy')
    code = ('import finetune; '
            'print(%r in open("/proc/self/maps").read())' % str(library))
    env = dict(os.environ, PYTHONPATH=str(tmp_path))
    result = subprocess.run([sys.executable, '-c', code], env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == 'False'
