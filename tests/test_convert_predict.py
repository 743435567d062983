"""finetune.convert and finetune.predict, end to end through their CLIs."""
import csv
import os
import shutil
import subprocess
import sys

import chainer
import numpy as np
import pytest

import finetune
from conftest import data_path
from finetune.caffe.importer import import_caffemodel
from finetune.models.model_file import load_model
from finetune.convert import convert_caffemodel
from finetune.models import AlexNet
from finetune.data.resources import imagenet_class_names


def run(*args):
    return subprocess.run([sys.executable, '-m'] + list(args),
                          capture_output=True, text=True, timeout=300)


@pytest.fixture(scope='module')
def alexnet_npz(alexnet_caffemodels, tmp_path_factory):
    directory = tmp_path_factory.mktemp('pretrained')
    caffemodel = str(directory / 'bvlc_alexnet.caffemodel')
    shutil.copy(alexnet_caffemodels['v1'], caffemodel)
    result = run('finetune.convert', caffemodel)
    assert result.returncode == 0, result.stderr
    assert 'wrote' in result.stdout
    return str(directory / 'bvlc_alexnet.npz')


def test_convert_writes_weights_with_metadata(alexnet_npz,
                                              alexnet_caffemodels):
    model, meta, preprocess = load_model(alexnet_npz)
    assert meta['arch'] == 'alexnet'
    assert meta['class_names'] == imagenet_class_names()
    assert meta['class_names'][281] == 'tabby, tabby cat'
    assert meta['layer_names'] == list(AlexNet.layer_names)
    assert preprocess.crop_size == 227 and preprocess.size == (256, 256)
    assert preprocess.mean.shape == (3, 256, 256)
    w = alexnet_caffemodels['weights']
    assert np.array_equal(model.fc6.W.array, w['fc6'][0])
    assert np.array_equal(model.conv2.b.array, w['conv2'][1])


def test_convert_is_skipped_when_up_to_date(alexnet_npz):
    caffemodel = alexnet_npz.replace('.npz', '.caffemodel')
    before = os.stat(alexnet_npz).st_mtime_ns
    result = run('finetune.convert', caffemodel)
    assert result.returncode == 0 and 'up to date' in result.stdout
    assert os.stat(alexnet_npz).st_mtime_ns == before


def test_concurrent_conversions_convert_once(tmp_path, lenet_files):
    caffemodel = str(tmp_path / 'lenet.caffemodel')
    shutil.copy(lenet_files['caffemodel'], caffemodel)
    args = [sys.executable, '-m', 'finetune.convert', caffemodel,
            '--prototxt', lenet_files['prototxt'], '--labels',
            lenet_files['labels'], '--scale', '0.00390625']
    procs = [subprocess.Popen(args, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
             for _ in range(3)]
    outputs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], outputs
    wrote = [out for out, _ in outputs if out.startswith('wrote')]
    assert len(wrote) == 1, outputs
    leftovers = [f for f in os.listdir(tmp_path) if f.endswith('.tmp.npz')]
    assert leftovers == []
    predictor = finetune.load(str(tmp_path / 'lenet.npz'))
    samples = sorted(os.listdir(lenet_files['samples']))
    labels, _ = predictor.predict(
        [os.path.join(lenet_files['samples'], f) for f in samples])
    names = predictor.class_names
    assert labels == [names[int(f.split('_')[1])] for f in samples]


def test_caffenet_layout_is_detected(tmp_path):
    text = open(data_path('caffe', 'flickr_style_deploy.prototxt')).read()
    deploy = tmp_path / 'caffenet.prototxt'
    deploy.write_text(text.replace('fc8_flickr', 'fc8'))
    from finetune.caffe.caffemodel import read_prototxt_param
    from finetune.caffe.writer import random_weights, write_caffemodel
    from finetune.models import CaffeNet
    weights = random_weights(CaffeNet(n_classes=20),
                             np.random.RandomState(0))
    caffemodel = str(tmp_path / 'caffenet.caffemodel')
    write_caffemodel(caffemodel, read_prototxt_param(str(deploy)), weights)
    out = convert_caffemodel(caffemodel)
    model, meta, _ = load_model(out)
    assert meta['arch'] == 'caffenet' and meta['n_classes'] == 20
    assert meta['class_names'][:2] == ['class0', 'class1']


def test_predict_prints_top5_with_imagenet_names(alexnet_npz,
                                                 alexnet_caffemodels):
    result = run('finetune.predict', '--model', alexnet_npz,
                 data_path('cat.jpg'), '--loaderjob', '0')
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert lines[0].endswith('cat.jpg') and len(lines) == 6
    # the printed classes are the model's top 5, in order
    predictor = finetune.load(alexnet_npz)
    _, probs = predictor.predict([data_path('cat.jpg')])
    best = np.argsort(-probs[0])[:5]
    for line, index in zip(lines[1:], best):
        prob, name = line.split(None, 1)
        assert name == imagenet_class_names()[index]
        assert float(prob) == pytest.approx(probs[0, index], abs=1e-4)


def test_predict_matches_direct_import(alexnet_npz, alexnet_caffemodels):
    predictor = finetune.load(alexnet_npz)
    direct = AlexNet()
    import_caffemodel(direct, alexnet_caffemodels['v2'])
    x = predictor.preprocess(data_path('fish-bike.jpg'))[np.newaxis]
    with chainer.using_config('train', False):
        expected = chainer.functions.softmax(direct(x)).array
    _, probs = predictor.predict([data_path('fish-bike.jpg')])
    assert np.abs(probs - expected).max() < 1e-6


def test_predict_batch_job_writes_csv_and_skips_corrupt(tmp_path,
                                                        lenet_files):
    npz = str(tmp_path / 'lenet.npz')
    assert run('finetune.convert', lenet_files['caffemodel'], '--out', npz,
               '--prototxt', lenet_files['prototxt'], '--labels',
               lenet_files['labels'], '--scale',
               '0.00390625').returncode == 0
    folder = tmp_path / 'digits'
    shutil.copytree(lenet_files['samples'], folder / 'sub')
    (folder / 'broken.png').write_bytes(b'\x89PNG\r\n\x1a\nnot really')
    out = str(tmp_path / 'preds.csv')
    result = run('finetune.predict', '--model', npz, str(folder), '--batch',
                 '4', '--loaderjob', '2', '--out', out)
    assert result.returncode == 0, result.stderr
    assert '10 images labelled, 1 skipped' in result.stderr
    rows = list(csv.DictReader(open(out)))
    assert len(rows) == 11
    broken = [r for r in rows if r['path'].endswith('broken.png')][0]
    assert broken['label'] == '' and 'broken.png' in broken['error']
    names = [l.split(None, 1)[1] for l in open(lenet_files['labels'])]
    for row in rows:
        if row['error']:
            continue
        digit = int(os.path.basename(row['path']).split('_')[1])
        assert row['label'] == names[digit].strip()


def test_predict_reports_a_bad_model_in_one_line(tmp_path):
    bogus = tmp_path / 'model.npz'
    bogus.write_bytes(b'not a zip')
    result = run('finetune.predict', '--model', str(bogus),
                 data_path('cat.jpg'))
    assert result.returncode == 2
    assert result.stderr.count('\n') == 1
    assert str(bogus) in result.stderr


def test_convert_resize_gives_crops_of_the_input(tmp_path, lenet_files):
    """``--resize 32`` on the 28x28 LeNet: images go to 32x32 and the net
    sees 28x28 crops (center ones when predicting); a size the crop does
    not fit in is refused in one line."""
    npz = str(tmp_path / 'lenet32.npz')
    common = ['finetune.convert', lenet_files['caffemodel'], '--prototxt',
              lenet_files['prototxt'], '--labels', lenet_files['labels'],
              '--scale', '0.00390625']
    result = run(*common, '--out', npz, '--resize', '32')
    assert result.returncode == 0, result.stderr
    _, _, preprocess = load_model(npz)
    assert (preprocess.size, preprocess.crop_size) == ((32, 32), 28)
    model = finetune.load(npz)
    samples = sorted(os.listdir(lenet_files['samples']))
    paths = [os.path.join(lenet_files['samples'], f) for f in samples]
    assert model.preprocess(paths[0]).shape == (1, 28, 28)
    labels, _ = model.predict(paths)
    names = [l.split(None, 1)[1].strip() for l in open(
        lenet_files['labels'])]
    digits = [int(f.split('_')[1]) for f in samples]
    assert sum(names.index(label) == d for label, d in
               zip(labels, digits)) >= 9
    small = run(*common, '--out', str(tmp_path / 'bad.npz'), '--resize',
                '24,40')
    assert small.returncode == 2
    assert small.stderr.strip() == ('error: --resize 24x40: crops must be '
                                    'square and fit in it; the net takes '
                                    '28x28')
