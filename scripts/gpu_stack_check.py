"""Check the GPU stack that ``pip install -e '.[gpu]'`` gives, with or
without a GPU: run by scripts/gpu_stack_check.sh in a fresh venv.

1. ``import finetune`` loads the pip CUDA libraries, so chainer finds CuPy
   usable (and cuDNN) with no LD_LIBRARY_PATH.
2. Every ``cupy.*``, cuDNN and NCCL name that chainer 7.8.1's source
   (ChainerMN included) uses exists in the installed CuPy (a removed API
   would fail only when that code runs), and chainer's cuDNN calls fit
   the signatures CuPy embeds in its docstrings.
3. NVRTC compiles CuPy's kernel headers (cupy/carray.cuh includes
   cuda_fp16.h, which NVRTC 12.2+ takes from the CUDA runtime headers),
   for sm_80 and sm_90: no GPU is needed to compile.
4. ``--gpu 0`` on a machine without a CUDA device is a one-line error (on
   a GPU machine: a kernel runs).
Exits 1 on any failure.
"""
import ast
import importlib
import io
import os
import re
import subprocess
import sys
import tempfile
import tokenize
import warnings

#: names chainer only tries after the current one (try/except ImportError)
FALLBACKS = {'cupy.util': 'chainer imports cupy._util first'}

#: a kernel as CuPy writes them: its headers, a float16 conversion
KERNEL = ('#include <cupy/carray.cuh>\n#include <cupy/complex.cuh>\n'
          'extern "C" __global__ void k(float* x) '
          '{ x[threadIdx.x] = (float)(half)x[threadIdx.x]; }\n')


def check(failures, ok, what):
    """Print one ok/FAIL line; remember a failure in ``failures``."""
    print('%s %s' % ('ok  ' if ok else 'FAIL', what))
    if not ok:
        failures.append(what)


def resolve(dotted):
    """The object at a dotted path such as 'cupy.cuda.runtime.free', or
    None when some part does not exist."""
    parts = dotted.split('.')
    obj = importlib.import_module(parts[0])
    for i, name in enumerate(parts[1:], 1):
        if hasattr(obj, name):
            obj = getattr(obj, name)
            continue
        try:
            obj = importlib.import_module('.'.join(parts[:i + 1]))
        except ImportError:
            return None
    return obj


def code_only(text):
    """Python source with comments and string literals blanked."""
    kept = []
    for token in tokenize.generate_tokens(io.StringIO(text).readline):
        if token.type not in (tokenize.COMMENT, tokenize.STRING):
            kept.append(token.string)
    return ' '.join(kept).replace(' . ', '.')


def chainer_files():
    """(path, source) of chainer's and ChainerMN's modules."""
    import chainer
    import chainermn
    for package in (chainer, chainermn):
        root = os.path.dirname(package.__file__)
        for folder, _, files in os.walk(root):
            for name in files:
                if name.endswith('.py') and 'testing' not in folder:
                    path = os.path.join(folder, name)
                    yield path, open(path, encoding='utf-8').read()


def chainer_sources():
    """(path, code without comments and strings) of chainer_files()."""
    for path, text in chainer_files():
        yield path, code_only(text)


def names_used(pattern):
    """{name: first file using it} for a regex with one group."""
    found = {}
    for path, text in chainer_sources():
        for name in re.findall(pattern, text):
            found.setdefault(name, path)
    return found


def documented_parameters(function):
    """[(name, has_default)] from a Cython function's embedded signature
    (the first line of its docstring), or None without one."""
    doc = (getattr(function, '__doc__', None) or '').strip()
    match = re.match(r'\w+\((.*?)\)(?:\s*->.*)?$', doc.split('\n')[0])
    if not match:
        return None
    params = []
    for part in re.split(r',\s*(?![^()]*\))', match.group(1)):
        part = part.strip()
        if not part or part in ('*', '/'):
            continue
        head, _, default = part.partition('=')
        params.append((head.split()[-1].lstrip('*'), bool(default)))
    return params


def _last_name(node):
    """'cudnn' for the expressions ``cudnn`` and ``cuda.cudnn``."""
    if isinstance(node, ast.Name):
        return node.id
    return node.attr if isinstance(node, ast.Attribute) else None


def call_mismatches(modules):
    """Calls ``[cuda.]cudnn.f(...)`` / ``libcudnn.f(...)`` in chainer whose
    positional count or keywords do not fit f's signature in ``modules``.
    Returns (checked, unchecked, [mismatch descriptions])."""
    checked, unchecked, bad = 0, set(), []
    for path, text in chainer_files():
        for node in ast.walk(ast.parse(text)):
            if not (isinstance(node, ast.Call)
                    and isinstance(node.func, ast.Attribute)
                    and _last_name(node.func.value) in ('cudnn',
                                                        'libcudnn')):
                continue
            name = node.func.attr
            function = next((getattr(m, name) for m in modules
                             if hasattr(m, name)), None)
            params = documented_parameters(function)
            if params is None or any(isinstance(a, ast.Starred)
                                     for a in node.args):
                unchecked.add(name)
                continue
            checked += 1
            given = len(node.args)
            keywords = {k.arg for k in node.keywords}
            names = [p for p, _ in params]
            required = {p for p, has_default in params[given:]
                        if not has_default}
            if (given > len(params) or not keywords <= set(names)
                    or not required <= keywords):
                bad.append('%s:%d %s(%d positional, %s) vs (%s)' % (
                    os.path.basename(path), node.lineno, name, given,
                    sorted(keywords), ', '.join(names)))
    return checked, sorted(unchecked), bad


def check_import(failures):
    """Import finetune then chainer as a user would; the chainer module,
    or None when it finds no CuPy."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        import finetune  # NOQA  (preloads the pip CUDA libraries)
        import chainer
    cuda = chainer.backends.cuda
    check(failures, cuda.available, 'chainer sees CuPy (cuda.available); '
          'reason: %s' % getattr(cuda, '_resolution_error', None))
    check(failures, cuda.cudnn_enabled,
          'chainer sees cuDNN (cuda.cudnn_enabled)')
    if not cuda.available:
        return None
    import cupy
    print('cupy %s, CUDA runtime %d, cuDNN %d, NCCL %s' % (
        cupy.__version__, cupy.cuda.runtime.runtimeGetVersion(),
        cupy.cuda.cudnn.getVersion(),
        cupy.cuda.nccl.get_version() if cupy.cuda.nccl.available else '-'))
    said = [(w.category.__name__, str(w.message)) for w in caught
            if 'cupy' in str(w.message).lower()]
    print('CuPy warnings at import: %s' % said)
    check(failures, not [w for w in said if w[0] != 'DeprecationWarning'],
          'no CuPy warning at import other than deprecations')
    return chainer


def check_names(failures):
    """cupy, cuDNN and NCCL names and cuDNN call signatures chainer uses."""
    import cupy
    # cupy.X.Y... as written in chainer's code (``cuda.cupy.X`` too)
    dotted = names_used(r'\bcupy((?:\.[A-Za-z_]\w*)+)')
    missing = sorted('cupy' + d for d in dotted
                     if resolve('cupy' + d) is None
                     and 'cupy' + d not in FALLBACKS)
    check(failures, not missing, '%d cupy names used by chainer/ChainerMN '
          'exist; missing: %s' % (len(dotted), missing))
    modules = (cupy.cudnn, cupy.cuda.cudnn)
    used = names_used(r'\b(?:lib)?cudnn\.([A-Za-z_]\w*)\b')
    gone = sorted(n for n in used
                  if not any(hasattr(m, n) for m in modules))
    check(failures, not gone, '%d cuDNN names used by chainer exist; '
          'missing: %s' % (len(used), gone))
    checked, unchecked, bad = call_mismatches(modules)
    check(failures, checked and not bad, '%d cuDNN calls in chainer fit '
          'the CuPy signatures%s; unchecked (no signature): %s'
          % (checked, ''.join('\n     ' + b for b in bad), unchecked))
    from chainermn import nccl  # what ChainerMN's communicators call
    check(failures, nccl._available, 'ChainerMN finds NCCL in CuPy')
    used = names_used(r'\bnccl\.([A-Za-z_]\w*)\b')
    gone = sorted(n for n in used if not hasattr(nccl, n)
                  and not hasattr(cupy.cuda.nccl, n))
    check(failures, not gone, '%d NCCL names used by chainer/ChainerMN '
          'exist; missing: %s' % (len(used), gone))


def check_nvrtc(failures):
    """Compile KERNEL with CuPy's own options, as its kernels compile."""
    import cupy._core.core as core
    from cupy.cuda import compiler
    options = (tuple(core.assemble_cupy_compiler_options(()))
               + compiler._get_extra_include_dir_opts()
               + ('--device-as-default-execution-space',))
    for arch in ('80', '90'):
        try:
            program = compiler._NVRTCProgram(KERNEL, 'k.cu', method='cubin')
            cubin = program.compile(options + ('-arch=sm_' + arch,))[0]
            check(failures, bool(cubin), 'NVRTC %s compiles a CuPy kernel '
                  'for sm_%s (%d bytes)' % (compiler._get_nvrtc_version(),
                                            arch, len(cubin)))
        except Exception as e:  # CompileException, no CUDA root, ...
            check(failures, False, 'NVRTC compiles a CuPy kernel for sm_%s: '
                  '%s' % (arch, ' '.join(str(e).split())[:300]))


def check_device(failures):
    """No device: one-line errors from device() and predict --gpu 0. A
    device: a kernel runs on it."""
    from finetune.demo import LENET_DIR
    from finetune.demo import convert_lenet
    from finetune.common.errors import FinetuneError
    from finetune.common.gpu import device
    from finetune.common.gpu import usable_device_count
    count = usable_device_count()
    print('CUDA devices: %d' % count)
    if count:
        x = device(0).xp.arange(6, dtype='f').reshape(2, 3)
        check(failures, float(x.sum()) == 15.0, 'a kernel runs on GPU 0')
        return
    try:
        device(0)
        check(failures, False, 'device(0) without a CUDA device raises')
    except FinetuneError as e:
        check(failures, '\n' not in str(e), 'device(0) error: %s' % e)
    with tempfile.TemporaryDirectory() as tmp:
        model = convert_lenet(tmp)
        result = subprocess.run(
            [sys.executable, '-m', 'finetune.predict', '--model', model,
             os.path.join(LENET_DIR, 'samples'), '--gpu', '0'],
            capture_output=True, text=True)
    lines = result.stderr.strip().splitlines()
    check(failures, result.returncode == 2 and len(lines) == 1
          and '--gpu 0' in lines[0],
          'predict --gpu 0: exit %d, %r' % (result.returncode, lines))


def main():
    failures = []
    if check_import(failures) is None:
        return 1
    check_names(failures)
    check_nvrtc(failures)
    check_device(failures)
    return 1 if failures else 0


if __name__ == '__main__':
    sys.exit(main())
