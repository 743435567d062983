"""The training pipeline on graph nets: the small random-weight ResNet,
inception and SqueezeNet nets of tests/assets/caffe (``small_nets``).

Each feature is run through ``finetune.fit`` (or ``find_lr``, or mpiexec)
on every shape and checked against an expectation computed here: OpenCV's
own Caffe importer on the caffemodel, the Chainer net's forward, Caffe's
BatchNorm rule, or an uninterrupted run.
"""
import csv
import json
import os
import sys

import chainer
import chainer.functions as F
import cv2
import numpy as np
import pytest
from PIL import Image

import finetune
from finetune.data.feature_cache import crop_windows
from finetune.models.model_file import load_model
from finetune.models.model_file import save_model
from finetune.training.extensions import SeededUpdater
from finetune.training.extensions import latest_snapshot
from finetune.training.fit import find_lr
from finetune.training.layer_spec import parse_layer_spec
from tests.support.graph_nets import NETS
from tests.support.graph_nets import SHAPES
from tests.support.graph_nets import config
from tests.support.graph_nets import entries
from tests.support.graph_nets import graph_nets  # noqa: F401 (fixture)
from tests.support.graph_nets import photos  # noqa: F401 (fixture)
from tests.support.mpi import mpi_available
from tests.support.mpi import mpi_command
from tests.support.mpi import run_mpi


def arrays(npz_path):
    """Every array of a model file, by key."""
    with np.load(npz_path) as npz:
        return {key: npz[key] for key in npz.files}


def opencv_forward(files, layer, x):
    """OpenCV's Caffe importer on the caffemodel, up to ``layer``."""
    net = cv2.dnn.readNetFromCaffe(files['prototxt'], files['caffemodel'])
    net.setInput(np.ascontiguousarray(x))
    return net.forward(layer)


def chainer_probabilities(model_path, paths):
    """Softmax of the saved model's Chainer forward on center crops."""
    model, _, prep = load_model(model_path)
    x = np.stack([prep(path) for path in paths])
    with chainer.using_config('train', False), chainer.no_backprop_mode():
        return F.softmax(model(x)).array


def relative_error(actual, expected):
    return np.abs(actual - expected).max() / np.abs(expected).max()


def cache_file(out, split):
    folder = os.path.join(str(out), 'feature_cache')
    found = [f for f in os.listdir(folder) if f.startswith(split + '-')]
    assert len(found) == 1, found
    return os.path.join(folder, found[0])


@pytest.mark.parametrize('name', NETS)
def test_feature_cache_holds_the_frozen_trunk_of_each_crop(
        name, graph_nets, photos, tmp_path, capsys):
    """--cache-features --cache-crops 3 with the net's Eltwise/Concat
    frozen: each cached crop is what OpenCV computes from the caffemodel
    up to the cut; a second run reuses the cache and a run whose frozen
    weights differ (a BatchNorm mean in the ResNet) rebuilds it."""
    shape, files = SHAPES[name], graph_nets[name]
    out = tmp_path / 'out'
    options = dict(freeze=shape.trunk, cache_features=True, cache_crops=3)
    finetune.fit(config(name, graph_nets, photos, out, **options))
    assert capsys.readouterr().err.count('features: cached in') == 2
    train = np.load(cache_file(out, 'train'))
    paths, _ = entries(out, photos)
    _, _, prep = load_model(files['model'])
    crops = np.stack([
        prep.crop(prep.image_array(path), window=window)
        for i, path in enumerate(paths)
        for window in crop_windows(prep, i, 'random', 3)])
    assert len({w for i in range(len(paths))
                for w in crop_windows(prep, i, 'random', 3)}) > 3
    expected = opencv_forward(files, shape.cut_layer, crops)
    assert train.shape == (len(paths), 3) + expected.shape[1:]
    assert relative_error(train.reshape(expected.shape), expected) < 1e-5
    val = np.load(cache_file(out, 'val'))
    val_paths, _ = entries(out, photos, 'val')
    centre = opencv_forward(files, shape.cut_layer,
                            np.stack([prep(p) for p in val_paths]))
    assert relative_error(val[:, 0], centre) < 1e-5

    finetune.fit(config(name, graph_nets, photos, out, overwrite=True,
                        **options))
    assert capsys.readouterr().err.count('features: reusing') == 2

    # the same net but for one frozen array: the cache is rebuilt
    net, meta, prep = load_model(files['model'])
    layer, attribute = shape.probe
    probe = getattr(net[layer], attribute)
    getattr(probe, 'array', probe)[...] += 0.5
    other = str(tmp_path / 'other.npz')
    save_model(other, net, meta['class_names'], prep)
    finetune.fit(config(name, graph_nets, photos, out, overwrite=True,
                        pretrained=other, **options))
    assert capsys.readouterr().err.count('features: cached in') == 2
    assert not np.allclose(np.load(cache_file(out, 'train')), train)


@pytest.mark.parametrize('name', NETS)
def test_lr_find_suggests_a_rate_that_trains(name, graph_nets, photos,
                                             tmp_path):
    """The range test runs on the graph net and plots its curve, and its
    suggestion trains: the training loss (computed here with Chainer on the
    training images) falls below 0.8x the first step's, and lower than at
    a rate 100x smaller."""
    shape = SHAPES[name]
    # all 12 training images in each step: a smooth curve
    result = find_lr(config(name, graph_nets, photos, tmp_path / 'find',
                            freeze=shape.trunk, batchsize=12))
    assert result.stop_reason in ('completed', 'diverged')
    assert np.isfinite(result.losses[0])
    with Image.open(tmp_path / 'find' / 'lr_find.png') as plot:
        assert plot.format == 'PNG'
    lr = result.suggested_lr
    assert result.lrs[0] <= lr <= result.lrs[-1]
    final = {}
    for rate in (lr, lr / 100):
        out = tmp_path / ('lr%g' % rate)
        run = finetune.fit(config(name, graph_nets, photos, out,
                                  freeze=shape.trunk, lr=rate, epochs=3))
        paths, labels = entries(out, photos)
        probs = chainer_probabilities(run.model_final, paths)
        final[rate] = -np.log(probs[np.arange(len(labels)), labels]).mean()
    assert final[lr] < 0.8 * result.losses[0], (final, result.losses[0])
    assert final[lr] < final[lr / 100], final


@pytest.mark.parametrize('name', NETS)
def test_evaluation_report_is_the_saved_models_prediction(
        name, graph_nets, photos, tmp_path):
    """The report's confusion matrix, per-class accuracy, top-1 accuracy
    and per-image probabilities equal the saved model's prediction computed
    here with Chainer (the report itself runs on OpenCV)."""
    out = tmp_path / 'out'
    run = finetune.fit(config(name, graph_nets, photos, out,
                              freeze=SHAPES[name].trunk, epochs=2))
    paths, labels = entries(out, photos, 'val')
    probs = chainer_probabilities(run.model_final, paths)
    predicted = probs.argmax(axis=1)
    expected = np.zeros((2, 2), int)
    for true, guess in zip(labels, predicted):
        expected[true, guess] += 1
    with open(out / 'confusion_matrix.csv') as f:
        rows = list(csv.reader(f))
    names = rows[0][1:]
    assert [row[0] for row in rows[1:]] == names
    assert np.array_equal(np.array([row[1:] for row in rows[1:]], int),
                          expected)
    with open(out / 'per_class_accuracy.csv') as f:
        per_class = {r['class']: r for r in csv.DictReader(f)}
    for i, class_name in enumerate(names):
        assert int(per_class[class_name]['n']) == (labels == i).sum()
        assert int(per_class[class_name]['correct']) == expected[i, i]
    assert run.metrics['top1_accuracy'] == pytest.approx(
        np.mean(predicted == labels))
    with open(out / 'highest_loss.csv') as f:
        p_true = {r['path']: float(r['p_true']) for r in csv.DictReader(f)}
    assert len(p_true) == len(paths)
    for path, label, row in zip(paths, labels, probs):
        assert p_true[os.path.relpath(path, str(photos))] == pytest.approx(
            row[label], abs=1e-5)


def bn_statistics(blobs):
    """(mean, var, factor) Caffe's BatchNorm blobs stand for."""
    mean, var, factor = blobs
    return mean / factor[0], var / factor[0], factor


@pytest.mark.parametrize('name', NETS)
def test_interrupted_run_resumes_bitwise(name, graph_nets, photos,
                                         tmp_path, monkeypatch, capsys):
    """A run stopped after iteration 4 (mid-epoch 2, its last snapshot
    taken) and resumed with --resume auto ends with a model_final.npz equal
    array for array, bitwise, to an uninterrupted run's: weights, dropout
    draws, crops, and BatchNorm statistics (a frozen BatchNorm and one with
    use_global_stats keep the caffemodel's; the others follow Caffe's
    moving average, one update per step)."""
    shape, files = SHAPES[name], graph_nets[name]
    options = dict(freeze=shape.shallow, snapshot_interval=2)
    straight = finetune.fit(config(name, graph_nets, photos,
                                   tmp_path / 'straight', **options))

    def stop_after_4(updater):
        if updater.iteration == 4:
            raise KeyboardInterrupt
        return real(updater)
    real = SeededUpdater.update_core
    killed = tmp_path / 'killed'
    with monkeypatch.context() as patch:
        patch.setattr(SeededUpdater, 'update_core', stop_after_4)
        with pytest.raises(KeyboardInterrupt):
            finetune.fit(config(name, graph_nets, photos, killed, **options))
    assert os.path.basename(latest_snapshot(str(killed))) == \
        'snapshot_iter_4'
    assert not os.path.exists(killed / 'model_final.npz')
    capsys.readouterr()
    resumed = finetune.fit(config(name, graph_nets, photos, killed,
                                  resume='auto', **options))
    assert 'resuming from %s' % (killed / 'snapshot_iter_4') in \
        capsys.readouterr().err

    a, b = arrays(straight.model_final), arrays(resumed.model_final)
    assert sorted(a) == sorted(b)
    for key in a:
        assert a[key].dtype == b[key].dtype, key
        assert a[key].tobytes() == b[key].tobytes(), key
    pretrained = arrays(files['model'])
    trained = [k for k in a if k.endswith('/W') and
               not k.startswith(shape.head + '/') and
               a[k].shape == pretrained[k].shape and
               not np.array_equal(a[k], pretrained[k])]
    assert trained, 'no pretrained layer was trained'
    if name != 'resnet_small':
        return
    weights = files['weights']
    steps = 6  # 12 images, batches of 4, 2 epochs
    for layer in ('bn_conv1', 'bn2a_branch1'):  # frozen; use_global_stats
        mean, var, factor = bn_statistics(weights[layer])
        np.testing.assert_allclose(b[layer + '/mean'], mean, rtol=1e-6)
        np.testing.assert_allclose(b[layer + '/var'], var, rtol=1e-6)
        assert np.array_equal(b[layer + '/factor'], factor)
    for layer in ('bn2a_branch2a', 'bn2b_branch2c'):
        factor = weights[layer][2][0]
        for _ in range(steps):
            factor = 0.999 * factor + 1
        assert b[layer + '/factor'][0] == pytest.approx(factor, rel=1e-5)
        mean, _, _ = bn_statistics(weights[layer])
        assert not np.allclose(b[layer + '/mean'], mean)


def read_log(out):
    with open(os.path.join(str(out), 'log')) as f:
        return json.load(f)


@pytest.mark.skipif(not mpi_available(), reason='needs OpenMPI '
                    '(apt-get install openmpi-bin libopenmpi-dev) and '
                    'mpi4py')
@pytest.mark.parametrize('name', NETS)
def test_two_mpi_ranks_train_each_graph_net(name, graph_nets, photos,
                                           tmp_path):
    """mpiexec -n 2 --communicator naive, BatchNorm, Scale, Eltwise,
    Concat and Dropout layers training: the ranks end with identical
    weights, rank 0 alone writes the results, the frozen layers (BatchNorm
    statistics included) are the pretrained ones, and the run learns as one
    process with the same effective batch (2 x 2 vs 4) does."""
    shape, model = SHAPES[name], graph_nets[name]['model']
    options = dict(freeze=shape.shallow, epochs=5)
    multi = tmp_path / 'multi'
    argv = ['--data', str(photos), '--pretrained', model, '--out',
            str(multi), '--freeze', shape.shallow, '--replace', shape.head,
            '--epochs', '5', '--batchsize', '2', '--val-split', '0.25',
            '--lr', str(shape.lr), '--loaderjob', '0', '--log-interval', '0']
    result = run_mpi(mpi_command(2) + [sys.executable, '-m',
                                       'finetune.train'] + argv +
                     ['--communicator', 'naive'])
    assert result.returncode == 0, result.stderr[-3000:]
    assert '2 ranks hold identical weights' in result.stderr
    assert result.stdout.count('top-1 accuracy') == 1
    single = tmp_path / 'single'
    finetune.fit(config(name, graph_nets, photos, single, **options))

    pretrained, after = arrays(model), arrays(multi / 'model_final.npz')
    net, _, _ = load_model(model)
    frozen = parse_layer_spec(shape.shallow, net)
    for key in pretrained:
        if key.rsplit('/', 1)[0] in frozen:
            assert np.array_equal(after[key], pretrained[key]), key
    a, b = read_log(multi), read_log(single)
    assert [e['epoch'] for e in a] == [e['epoch'] for e in b] == \
        [1, 2, 3, 4, 5]
    assert a[-1]['validation/main/loss'] < a[0]['validation/main/loss']
    accuracy = [log[-1]['validation/main/accuracy'] for log in (a, b)]
    assert min(accuracy) >= 0.75 and abs(accuracy[0] - accuracy[1]) <= 0.25
