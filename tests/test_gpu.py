"""The CuPy path, on a GPU machine; every test skips without CUDA.

Run them where a GPU is: ``pip install -e '.[gpu,test]'`` then
``pytest tests/test_gpu.py``.
"""
import csv
import json
import os
import subprocess
import sys

import chainer
import numpy as np
import pytest

from finetune.models.model_file import load_model
from finetune.common.gpu import usable_device_count

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(
    usable_device_count() == 0, reason='needs CuPy and a CUDA device')]


def train_cli(data, pretrained, out, *extra):
    result = subprocess.run(
        [sys.executable, '-m', 'finetune.train', '--data', data,
         '--pretrained', pretrained, '--out', str(out), '--batchsize', '16',
         '--val-split', '0.3', '--lr', '0.01', '--loaderjob', '2',
         '--log-interval', '0', '--freeze', 'conv1', '--replace', 'ip2']
        + list(extra), capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    return result


def test_forward_on_gpu_equals_cpu(digits):
    model, _, _ = load_model(digits[1])
    x = np.random.RandomState(0).rand(8, 1, 28, 28).astype(np.float32)
    with chainer.using_config('train', False):
        cpu = model(x).array
        model.to_device('@cupy:0')
        gpu = chainer.backends.cuda.to_cpu(model(model.xp.asarray(x)).array)
    np.testing.assert_allclose(gpu, cpu, rtol=1e-4, atol=1e-4)


def test_gpu_snapshot_resumes_on_cpu_and_back(digits, tmp_path):
    data, pretrained = digits
    out = tmp_path / 'out'
    train_cli(data, pretrained, out, '--epochs', '2', '--gpu', '0')
    cpu = train_cli(data, pretrained, out, '--epochs', '3', '--gpu', '-1',
                    '--resume', 'auto')
    assert 'resuming from' in cpu.stderr
    train_cli(data, pretrained, out, '--epochs', '4', '--gpu', '0',
              '--resume', 'auto')
    epochs = [e['epoch'] for e in json.load(open(out / 'log'))]
    assert epochs == [1, 2, 3, 4]
    # the GPU-trained, CPU-resumed, GPU-finished model classifies the
    # validation digits as well as a CPU-only run of the same length
    cpu_only = tmp_path / 'cpu_only'
    train_cli(data, pretrained, cpu_only, '--epochs', '4', '--gpu', '-1')
    mixed = json.load(open(out / 'log'))[-1]['validation/main/accuracy']
    plain = json.load(open(cpu_only / 'log'))[-1][
        'validation/main/accuracy']
    assert abs(mixed - plain) <= 0.05


def test_float16_on_gpu_trains_and_saves_float32(digits, tmp_path):
    data, pretrained = digits
    train_cli(data, pretrained, tmp_path, '--epochs', '2', '--gpu', '0',
              '--dtype', 'float16')
    with np.load(str(tmp_path / 'model_final.npz')) as stored:
        # on disk, not through load_model (which would cast anyway)
        assert all(stored[k].dtype == np.float32 for k in stored.files
                   if k.endswith('/W') or k.endswith('/b'))
    log = json.load(open(tmp_path / 'log'))
    assert log[-1]['validation/main/accuracy'] > 0.5  # learned in float16


def test_predict_batch_job_on_gpu(tmp_path, lenet_files):
    npz = str(tmp_path / 'lenet.npz')
    convert = subprocess.run(
        [sys.executable, '-m', 'finetune.convert', lenet_files['caffemodel'],
         '--out', npz, '--prototxt', lenet_files['prototxt'], '--labels',
         lenet_files['labels'], '--scale', '0.00390625'],
        capture_output=True, text=True)
    assert convert.returncode == 0, convert.stderr
    out = str(tmp_path / 'preds.csv')
    result = subprocess.run(
        [sys.executable, '-m', 'finetune.predict', '--model', npz,
         lenet_files['samples'], '--gpu', '0', '--batch', '4', '--out', out],
        capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    names = [l.split(None, 1)[1].strip() for l in open(lenet_files['labels'])]
    rows = list(csv.DictReader(open(out)))
    assert len(rows) == 10
    right = sum(names.index(r['label']) == int(
        os.path.basename(r['path']).split('_')[1]) for r in rows)
    assert right >= 9
