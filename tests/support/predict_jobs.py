"""A ``finetune.predict`` job on the real LeNet: the converted model, a
photo folder with hostile names and a broken file, the command line and an
uninterrupted reference run. The fixtures are imported by the test modules
that use them."""
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest


#: Names a spreadsheet would run as formulas, and one that is not UTF-8.
HOSTILE_NAMES = ['=cmd.png', '+sum.png', '-neg.png', '@at.png',
                 "'quoted.png"]


@pytest.fixture(scope='module')
def lenet_npz(lenet_files, tmp_path_factory):
    from finetune.weights.conversion import ConversionOptions
    from finetune.weights.conversion import convert_caffemodel
    return convert_caffemodel(
        lenet_files['caffemodel'],
        str(tmp_path_factory.mktemp('lenet') / 'lenet.npz'),
        ConversionOptions(prototxt=lenet_files['prototxt'],
                          labels=lenet_files['labels'], scale=1 / 256))


@pytest.fixture(scope='module')
def photos(lenet_files, tmp_path_factory):
    """30 digit images in two folders, a broken one, formula-like names
    and a name that is not UTF-8 (b'bad\\xff.png')."""
    root = tmp_path_factory.mktemp('job') / 'photos'
    samples = sorted(os.listdir(lenet_files['samples']))
    for copy in range(2):
        shutil.copytree(lenet_files['samples'], root / ('set%d' % copy))
    extra = root / 'extra'
    extra.mkdir()
    for i, name in enumerate(HOSTILE_NAMES):
        shutil.copy(os.path.join(lenet_files['samples'], samples[i]),
                    extra / name)
    (extra / 'broken.png').write_bytes(b'\x89PNG\r\n\x1a\nnot really')
    undecodable = os.path.join(os.fsencode(extra), b'bad\xff.png')
    shutil.copy(os.path.join(lenet_files['samples'], samples[5]),
                undecodable)
    for i in range(3):
        shutil.copy(os.path.join(lenet_files['samples'], samples[i]),
                    extra / ('more%d.png' % i))
    return str(root)


def job_inputs(photos):
    """(folder to run in, inputs): the formula-like names given relative
    to the folder, so that their cells start with = + - @ '; 35 images."""
    return (os.path.join(photos, 'extra'),
            HOSTILE_NAMES + ['.', '../set0', '../set1'])


def predict_command(model, photos, out, *extra):
    return [sys.executable, '-m', 'finetune.predict', '--model', model,
            '-o', str(out), '-B', '2', '--chunk', '2', '-j', '0', *extra,
            '--', *job_inputs(photos)[1]]


@pytest.fixture(scope='module')
def reference(lenet_npz, photos, tmp_path_factory):
    """An uninterrupted run with --features ip1: (csv bytes, npy array)."""
    out = tmp_path_factory.mktemp('reference') / 'preds.csv'
    result = subprocess.run(predict_command(lenet_npz, photos, out,
                                            '--features', 'ip1'),
                            capture_output=True, text=True,
                            cwd=job_inputs(photos)[0])
    assert result.returncode == 0, result.stderr
    return out.read_bytes(), np.load(str(out)[:-4] + '.npy')
