"""``fit(TrainConfig)`` is the whole run: what ``python -m finetune.train``
does with the same options, on the real Caffe LeNet and real digits."""
import ast
import os
import subprocess
import sys

import pytest

from finetune.common.errors import FinetuneError
from finetune.training.config import TrainConfig
from finetune.training.fit import fit

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(
    __file__))))
DATA_PACKAGE = os.path.join(ROOT, 'finetune', 'data')


def small_config(digits, out, **fields):
    data, pretrained = digits
    return TrainConfig(data=data, pretrained=pretrained, out=str(out),
                       batchsize=16, val_split=0.3, loaderjob=0, **fields)


def test_lr_find_runs_the_range_test_instead_of_training(digits, tmp_path):
    """lr_find=True is the range test (as --lr-find is on the command line):
    a plot and a suggestion, and no trained model or snapshot."""
    out = tmp_path / 'out'
    result = fit(small_config(digits, out, lr_find=True, epochs=1))
    assert (out / 'lr_find.png').stat().st_size > 0
    assert 1e-6 <= result.suggested_lr <= 1.0
    assert len(result.lrs) == len(result.losses) > 1
    written = set(os.listdir(out))
    assert 'model_final.npz' not in written
    assert 'model_best.npz' not in written
    assert not [name for name in written if name.startswith('snapshot')]


FIT_THEN_PROBE = '''
import sys
import numpy as np

def rss_mib():
    with open('/proc/self/status') as f:
        for line in f:
            if line.startswith('VmRSS:'):
                return int(line.split()[1]) // 1024

if sys.argv[1] == 'fit':
    from finetune.training.config import TrainConfig
    from finetune.training.fit import fit
    fit(TrainConfig(data=sys.argv[2], pretrained=sys.argv[3],
                    out=sys.argv[4], epochs=1, batchsize=16, loaderjob=0,
                    val_split=0.3))
block = np.ones(300 << 18, np.float32)  # 300 MiB, touched
held = rss_mib()
del block
print(held, rss_mib())
'''


@pytest.mark.skipif(not sys.platform.startswith('linux'),
                    reason='glibc tuning')
def test_fit_keeps_freed_memory_as_the_command_line_does(digits, tmp_path):
    """After fit() in a fresh interpreter, a freed 300 MiB block stays in
    the process (glibc told to keep freed memory, as train's CLI does);
    without fit, glibc gives it back at once (it was mmap'd)."""
    def rss(*argv):
        out = subprocess.run([sys.executable, '-c', FIT_THEN_PROBE] +
                             list(argv), capture_output=True, text=True,
                             check=True, cwd=ROOT, timeout=600)
        return [int(v) for v in out.stdout.split()[-2:]]
    held, released = rss('plain')
    assert released < held - 200  # the probe tells the two apart
    held, kept = rss('fit', *digits, str(tmp_path / 'out'))
    assert kept > held - 30


@pytest.mark.parametrize('field,value', [
    ('batchsize', '32'), ('epochs', 1.5), ('lr', 'fast'),
    ('lr_find', 'yes'), ('image_list', 3)])
def test_a_field_of_the_wrong_type_is_refused_naming_it(field, value):
    with pytest.raises(FinetuneError) as error:
        TrainConfig(data='photos', **{field: value})
    assert field.replace('_', '-') in str(error.value)
    assert len(str(error.value).splitlines()) == 1


def imported_modules(path):
    """Every module ``path`` imports, at module level or in a function."""
    names = set()
    for node in ast.walk(ast.parse(open(path).read())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def test_no_two_data_modules_import_each_other():
    """images.py <-> transforms.py was a loop (broken by a function-level
    import); no pair of finetune.data modules imports each other."""
    modules = {name[:-3]: imported_modules(os.path.join(DATA_PACKAGE, name))
               for name in os.listdir(DATA_PACKAGE) if name.endswith('.py')}
    assert 'finetune.data.images' in modules['transforms']
    loops = sorted((a, b) for a in modules for b in modules if a < b and
                   'finetune.data.' + b in modules[a] and
                   'finetune.data.' + a in modules[b])
    assert loops == []


@pytest.mark.parametrize('module', ['finetune.data.images',
                                    'finetune.data.transforms'])
def test_each_image_module_imports_alone(module):
    subprocess.run([sys.executable, '-c', 'import ' + module], check=True,
                   cwd=ROOT, timeout=120)


def test_train_config_is_made_without_chainer():
    """The package docstring's list of what imports chainer: TrainConfig
    does not (it is made before any chainer work)."""
    out = subprocess.run([sys.executable, '-c', (
        'import sys, finetune\n'
        "finetune.TrainConfig(data='photos')\n"
        "print('chainer' in sys.modules)")], capture_output=True, text=True,
        check=True, cwd=ROOT, timeout=120)
    assert out.stdout.split() == ['False']
