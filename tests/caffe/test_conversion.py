"""finetune.weights.conversion, also through ``python -m
finetune.convert``."""
import hashlib
import os
import shutil
import subprocess
import sys

import numpy as np

import finetune
from finetune.models.model_file import load_model
from finetune.weights.conversion import convert_caffemodel
from finetune.models.alexnet import LAYER_NAMES
from finetune.data.resources import imagenet_class_names
from finetune.weights.registry import pretrained_model


from tests.support.processes import run_module as run


def test_convert_writes_weights_with_metadata(alexnet_npz,
                                              alexnet_caffemodels):
    model, meta, preprocess = load_model(alexnet_npz)
    assert meta['arch'] == 'caffe_graph'
    assert meta['class_names'] == imagenet_class_names()
    assert meta['class_names'][281] == 'tabby, tabby cat'
    assert meta['layer_names'] == list(LAYER_NAMES)
    assert preprocess.crop_size == 227 and preprocess.size == (256, 256)
    assert preprocess.mean.shape == (3, 256, 256)
    w = alexnet_caffemodels['weights']
    assert np.array_equal(model.fc6.W.array, w['fc6'][0])
    assert np.array_equal(model.conv2.b.array, w['conv2'][1])


def test_convert_is_skipped_when_up_to_date(alexnet_npz):
    caffemodel = alexnet_npz.replace('.npz', '.caffemodel')
    before = os.stat(alexnet_npz).st_mtime_ns
    result = run('finetune.convert', caffemodel, '--out',
                 os.path.dirname(alexnet_npz))
    assert result.returncode == 0 and 'up to date' in result.stdout
    assert os.stat(alexnet_npz).st_mtime_ns == before


def test_concurrent_conversions_convert_once_into_the_cache(tmp_path,
                                                          lenet_files):
    """Without --out the model file goes to the per-user cache
    ($FINETUNE_CACHE/converted), named after the source and its absolute
    path's SHA-1; nothing is written beside the caffemodel."""
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
    # no temporary file and no lock file is left anywhere
    assert sorted(os.listdir(tmp_path)) == ['finetune-cache',
                                           'lenet.caffemodel']
    converted = tmp_path / 'finetune-cache' / 'converted'
    key = hashlib.sha1(caffemodel.encode()).hexdigest()[:12]
    assert os.listdir(converted) == ['lenet-%s.npz' % key]
    assert wrote == ['wrote %s\n' % (converted / os.listdir(converted)[0])]
    predictor = finetune.load(str(converted / os.listdir(converted)[0]))
    samples = sorted(os.listdir(lenet_files['samples']))
    labels, _ = predictor.predict(
        [os.path.join(lenet_files['samples'], f) for f in samples])
    names = predictor.class_names
    assert labels == [names[int(f.split('_')[1])] for f in samples]


def test_caffenet_layout_is_detected(tmp_path):
    text = open(pretrained_model('flickr_style').prototxt_path()).read()
    deploy = tmp_path / 'caffenet.prototxt'
    deploy.write_text(text.replace('fc8_flickr', 'fc8'))
    from finetune.caffe.caffemodel import read_prototxt_param
    from finetune.caffe.writer import random_weights, write_caffemodel
    from finetune.models import CaffeNet
    weights = random_weights(CaffeNet(n_classes=20),
                             np.random.RandomState(0))
    caffemodel = str(tmp_path / 'caffenet.caffemodel')
    write_caffemodel(caffemodel, read_prototxt_param(str(deploy)), weights)
    out = convert_caffemodel(caffemodel, str(tmp_path / 'caffenet.npz'))
    model, meta, _ = load_model(out)
    assert meta['arch'] == 'caffe_graph' and meta['n_classes'] == 20
    # the pooling before its normalization: CaffeNet's layout
    assert model.layer_order[:4] == ('conv1', 'relu1', 'pool1', 'norm1')
    assert meta['class_names'][:2] == ['class0', 'class1']


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


def lenet_convert_args(lenet_files, *extra):
    return ['finetune.convert', lenet_files['caffemodel'], '--prototxt',
            lenet_files['prototxt'], '--labels', lenet_files['labels'],
            '--scale', '0.00390625'] + list(extra)


def test_changed_options_or_source_convert_again(tmp_path, lenet_files):
    """"Up to date" compares the options and the source, not file times:
    a new --resize/--scale/--mean or a touched caffemodel re-converts."""
    caffemodel = tmp_path / 'lenet.caffemodel'
    shutil.copy(lenet_files['caffemodel'], caffemodel)
    npz = str(tmp_path / 'lenet.npz')
    args = ['finetune.convert', str(caffemodel), '--prototxt',
            lenet_files['prototxt'], '--scale', '0.00390625', '--out', npz]
    assert run(*args).stdout.startswith('wrote')
    assert run(*args).stdout.startswith('up to date')
    resized = run(*args, '--resize', '32')
    assert resized.stdout.startswith('wrote'), resized.stderr
    assert load_model(npz)[2].size == (32, 32)
    assert run(*args, '--resize', '32').stdout.startswith('up to date')
    assert run(*args).stdout.startswith('wrote')  # back to no resize
    assert load_model(npz)[2].size == (28, 28)
    assert run(*args, '--mean', '33').stdout.startswith('wrote')
    assert float(load_model(npz)[2].mean.ravel()[0]) == 33.0
    assert run(*args).stdout.startswith('wrote')
    stat = os.stat(caffemodel)
    os.utime(caffemodel, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    assert run(*args).stdout.startswith('wrote')


def test_out_folder_gets_the_default_name(tmp_path, lenet_files):
    folder = tmp_path / 'models'
    folder.mkdir()
    result = run(*lenet_convert_args(lenet_files, '--out', str(folder)))
    assert result.returncode == 0, result.stderr
    assert os.listdir(folder) == ['lenet_iter_10000.npz']
    bad = run(*lenet_convert_args(lenet_files, '--out',
                                  str(tmp_path / 'lenet.bin')))
    assert bad.returncode == 2 and bad.stderr.count('\n') == 1
    assert 'must be a .npz file or an existing folder' in bad.stderr


def test_mean_with_the_wrong_channel_count_is_refused(tmp_path,
                                                      lenet_files):
    result = run(*lenet_convert_args(lenet_files, '--out',
                                     str(tmp_path / 'x.npz'), '--mean',
                                     '1,2'))
    assert result.returncode == 2
    assert result.stderr.strip() == ('error: --mean: 2 channel(s) for a net '
                                     'with 1 input channel(s)')
    assert not os.path.exists(tmp_path / 'x.npz')


def test_converting_a_read_only_source_leaves_nothing_beside_it(tmp_path,
                                                               lenet_files):
    """The lock is taken on the caffemodel itself, so a read-only folder
    converts into a writable --out and gets no lock file."""
    source = tmp_path / 'ro'
    source.mkdir()
    shutil.copy(lenet_files['caffemodel'], source / 'lenet.caffemodel')
    os.chmod(source / 'lenet.caffemodel', 0o444)
    os.chmod(source, 0o555)
    try:
        out = str(tmp_path / 'lenet.npz')
        result = run('finetune.convert', str(source / 'lenet.caffemodel'),
                     '--prototxt', lenet_files['prototxt'], '--out', out)
        assert result.returncode == 0, result.stderr
        assert os.listdir(source) == ['lenet.caffemodel']
    finally:
        os.chmod(source, 0o755)
