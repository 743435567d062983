"""finetune.fit end to end on real data: the real Caffe LeNet, real digits.

The digits are scikit-learn's bundled scans written as an image folder; the
network is the Caffe-trained LeNet from examples/lenet.
"""
import csv
import json
import os
import re
import signal
import subprocess
import sys
import time
import zipfile

import chainer
import numpy as np
import pytest

from finetune.models.model_file import load_model
from finetune.common.errors import FinetuneError
from finetune.training.surgery import parse_layer_spec
from finetune.training.config import build_parser
from finetune.training.config import config_from_args
from finetune.training.fit import fit
from finetune.training.extensions import latest_snapshot
from tests.support.training import params
from tests.support.training import run_train
from tests.support.training import train_args

LAYERS = ('conv1', 'conv2', 'conv3', 'conv4', 'conv5', 'fc6', 'fc7', 'fc8')


def test_layer_specs():
    assert parse_layer_spec('conv1-conv5', LAYERS) == list(LAYERS[:5])
    assert parse_layer_spec('conv1,conv3', LAYERS) == ['conv1', 'conv3']
    assert parse_layer_spec('fc6,conv1-conv2', LAYERS) == [
        'conv1', 'conv2', 'fc6']
    assert parse_layer_spec('none', LAYERS) == []
    assert parse_layer_spec('all', LAYERS) == list(LAYERS)
    with pytest.raises(FinetuneError, match='unknown layer'):
        parse_layer_spec('conv9', LAYERS)
    with pytest.raises(FinetuneError, match='bad layer range'):
        parse_layer_spec('conv5-conv1', LAYERS)


def test_frozen_layers_are_bitwise_unchanged(digits, tmp_path):
    data, pretrained = digits
    before = params(pretrained)
    run_train(*train_args(data, pretrained, tmp_path, '--epochs', '2',
                          '--freeze', 'conv1-conv2', '--replace', 'ip2'))
    after = params(str(tmp_path / 'model_final.npz'))
    for name in ('conv1', 'conv2'):
        for b, a in zip(before[name], after[name]):
            assert np.array_equal(a, b), name
    # ip1 was trained from its pretrained value; ip2 is a new head
    assert not np.array_equal(after['ip1'][0], before['ip1'][0])
    assert after['ip2'][0].shape == before['ip2'][0].shape


def test_frozen_prefix_records_no_graph(digits):
    from finetune.training.surgery import FineTuneNet, frozen_prefix
    model, _, _ = load_model(digits[1])
    prefix = frozen_prefix(model.layer_names, ['conv1', 'conv2'])
    net = FineTuneNet(model, prefix)
    x = np.random.rand(2, 1, 28, 28).astype(np.float32)
    net.cleargrads()
    loss = chainer.functions.sum(net(x))
    loss.backward()
    assert prefix == 2
    assert model.conv1.W.grad is None and model.conv2.W.grad is None
    assert model.ip1.W.grad is not None and model.ip1.W.grad.any()
    assert net.features(x).creator is None  # nothing recorded


def test_freezing_before_optimizer_setup_is_refused(digits):
    from finetune.training.surgery import freeze_layers
    model, _, _ = load_model(digits[1])
    with pytest.raises(ValueError, match='before optimizer.setup'):
        freeze_layers(model, ['conv1'])


def test_corrupt_files_are_skipped_and_reported(digits, tmp_path):
    data, pretrained = digits
    import shutil
    photos = tmp_path / 'photos'
    shutil.copytree(data, photos)
    (photos / '3' / 'empty.png').write_bytes(b'')
    (photos / '5' / 'notes.jpg').write_text('not an image')
    good = open(photos / '7' / sorted(os.listdir(photos / '7'))[0],
                'rb').read()
    (photos / '7' / 'cut.png').write_bytes(good[:len(good) // 2])
    out = tmp_path / 'out'
    run_train(*train_args(str(photos), pretrained, out, '--epochs', '1',
                          '--freeze', 'conv1-conv2', '--replace', 'ip2'))
    problems = {os.path.basename(r['path']): r['reason']
                for r in csv.DictReader(open(out / 'problems.csv'))}
    assert set(problems) == {'empty.png', 'notes.jpg', 'cut.png'}
    listed = open(out / 'train.txt').read() + open(out / 'val.txt').read()
    assert 'empty.png' not in listed and 'cut.png' not in listed


def read_log(out):
    return json.load(open(os.path.join(out, 'log')))


def test_predict_reproduces_the_evaluator_accuracy(digits, tmp_path):
    data, pretrained = digits
    run_train(*train_args(data, pretrained, tmp_path, '--epochs', '2',
                          '--freeze', 'conv1-conv2', '--replace', 'ip1-ip2',
                          '--log-interval', '0'))
    evaluator = read_log(tmp_path)[-1]['validation/main/accuracy']
    val = [line.rsplit(None, 1) for line in open(tmp_path / 'val.txt')]
    out_csv = str(tmp_path / 'preds.csv')
    result = subprocess.run(
        [sys.executable, '-m', 'finetune.predict', '--model',
         str(tmp_path / 'model_final.npz'), '--loaderjob', '0',
         '--out', out_csv] + [os.path.join(data, p) for p, _ in val],
        capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    rows = list(csv.DictReader(open(out_csv)))
    _, meta, _ = load_model(str(tmp_path / 'model_final.npz'))
    names = meta['class_names']
    correct = sum(row['label'] == names[int(label)]
                  for row, (_, label) in zip(rows, val))
    assert correct / len(val) == pytest.approx(evaluator, abs=1e-6)
    for name in ('per_class_accuracy.csv', 'confusion_matrix.csv',
                 'confusion_matrix.png', 'highest_loss.csv', 'loss.png',
                 'accuracy.png', 'model_best.npz'):
        assert os.path.exists(tmp_path / name), name


def train_command(data, pretrained, out, *extra):
    return [sys.executable, '-m', 'finetune.train'] + train_args(
        data, pretrained, out, '--epochs', '4', '--freeze', 'conv1',
        '--replace', 'ip2', '--snapshot-interval', '3', '--loaderjob', '2',
        *extra)


def wait_for_a_snapshot(out, timeout=120):
    """Until the run in ``out`` has written a snapshot (any: older ones
    are deleted as new ones come, so one name may be missed)."""
    deadline = time.time() + timeout
    while time.time() < deadline and latest_snapshot(str(out)) is None:
        time.sleep(0.02)


def test_sigkill_and_resume_gives_the_same_weights(digits, tmp_path):
    data, pretrained = digits
    straight = tmp_path / 'straight'
    subprocess.run(train_command(data, pretrained, straight), check=True,
                   capture_output=True)
    killed = tmp_path / 'killed'
    proc = subprocess.Popen(train_command(data, pretrained, killed),
                            stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL,
                            start_new_session=True)
    wait_for_a_snapshot(killed)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert latest_snapshot(str(killed)) is not None
    assert not os.path.exists(killed / 'model_final.npz')
    resumed = subprocess.run(
        train_command(data, pretrained, killed, '--resume', 'auto'),
        capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    assert 'resuming from' in resumed.stderr
    a = params(str(straight / 'model_final.npz'))
    b = params(str(killed / 'model_final.npz'))
    for name in a:
        for x, y in zip(a[name], b[name]):
            assert np.array_equal(x, y), name
    log_a, log_b = read_log(straight), read_log(killed)
    assert [e['iteration'] for e in log_a] == [e['iteration'] for e in log_b]
    # the plots hold one point per epoch, none added by the resume
    final = os.path.basename(latest_snapshot(str(straight)))
    assert final == os.path.basename(latest_snapshot(str(killed)))
    plots = []
    for out in (straight, killed):
        with np.load(os.path.join(out, final)) as snapshot:
            key = [k for k in snapshot.files if k.endswith('_plot_loss.png')]
            plots.append(json.loads(str(snapshot[key[0]])))
    epochs = [point[0] for point in plots[1]['main/loss']]
    assert len(epochs) >= 2 and epochs == list(range(1, len(epochs) + 1))
    assert plots[0] == plots[1]


KILL_IN_SNAPSHOT = '''
import os, sys
import finetune.common.fileio as fileio
from finetune.train import main
real = fileio.atomic_write
def dying_write(path, suffix=''):
    if not path.endswith('snapshot_iter_6'):
        return real(path, suffix)
    with real(path, suffix) as tmp:
        with open(tmp, 'wb') as file:
            file.write(b'PK partial')
        os._exit(9)
fileio.atomic_write = dying_write
main(sys.argv[1:])
'''


def test_kill_during_snapshot_write_keeps_the_last_good_one(digits,
                                                            tmp_path):
    data, pretrained = digits
    out = tmp_path / 'out'
    argv = train_command(data, pretrained, out)[3:]
    result = subprocess.run([sys.executable, '-c', KILL_IN_SNAPSHOT] + argv,
                            capture_output=True)
    assert result.returncode == 9
    latest = latest_snapshot(str(out))
    assert os.path.basename(latest) == 'snapshot_iter_3'
    with np.load(latest) as snapshot:  # complete and readable
        assert 'updater/iteration' in snapshot.files
    with zipfile.ZipFile(latest) as snapshot:  # written without zlib
        assert {m.compress_type for m in snapshot.infolist()} == {
            zipfile.ZIP_STORED}
    resumed = subprocess.run(
        train_command(data, pretrained, out, '--resume', 'auto'),
        capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr


FILE_SIZE_LIMIT = '''
import resource, runpy, signal, sys
limit = int(sys.argv.pop(1))
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # write() fails with EFBIG
resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
runpy.run_module('finetune.train', run_name='__main__')
'''


def with_file_size_limit(limit, argv, directory):
    """``python -m finetune.train ARGV`` where no file may grow past
    ``limit`` bytes (RLIMIT_FSIZE: what a full disk does to a write)."""
    return [sys.executable, '-c', FILE_SIZE_LIMIT, str(limit)] + argv


def on_full_tmpfs(size, argv, directory):
    """``python -m finetune.train ARGV`` with a tmpfs of ``size`` bytes
    mounted on ``directory`` (in a user and mount namespace: no root
    needed where unprivileged namespaces are allowed; skips elsewhere)."""
    mount = ['unshare', '--user', '--map-root-user', '--mount', 'sh', '-c',
             'mount -t tmpfs -o size=%d tmpfs "$0" && exec "$@"' % size,
             str(directory)]
    probe = subprocess.run(mount + ['true'], capture_output=True)
    if probe.returncode != 0:
        pytest.skip('cannot mount a tmpfs here: %s' % probe.stderr[-200:])
    return mount + [sys.executable, '-m', 'finetune.train'] + argv


@pytest.mark.parametrize('limited,size,message,written', [
    # below the model's 1.7 MB: model_best.npz is the first write to fail
    (with_file_size_limit, 10 ** 6, 'File too large', r'model_best\.npz'),
    # room for model_best.npz, not for a snapshot (weights and momentum)
    (with_file_size_limit, 25 * 10 ** 5, 'File too large',
     r'snapshot_iter_\d+'),
    (on_full_tmpfs, 10 ** 6, 'No space left on device',
     r'model_best\.npz'),
], ids=['file-size-limit-model', 'file-size-limit-snapshot', 'full-tmpfs'])
def test_full_disk_stops_with_one_line_naming_the_file(
        digits, tmp_path, limited, size, message, written):
    data, pretrained = digits
    disk = tmp_path / 'disk'
    disk.mkdir()
    out = disk / 'out'
    argv = train_args(data, pretrained, out, '--epochs', '2',
                      '--replace', 'ip2')
    result = subprocess.run(limited(size, argv, disk), capture_output=True,
                            text=True, cwd=str(tmp_path))
    assert result.returncode == 2, result.stderr[-3000:]
    lines = result.stderr.strip().splitlines()
    assert re.fullmatch(r"error: \[Errno \d+\] %s: '%s/%s'" % (
        message, re.escape(str(out)), written), lines[-1]), lines[-1]
    assert [line for line in lines if 'error' in line.lower()] == lines[-1:]
    for text in (result.stdout, result.stderr):
        assert 'Traceback' not in text and 'Exception ignored' not in text
    if limited is with_file_size_limit:  # (the tmpfs went with its files)
        assert not [name for name in os.listdir(out) if 'tmp' in name]


def test_missing_pretrained_says_how_to_fetch(tmp_path, digits):
    result = subprocess.run(
        [sys.executable, '-m', 'finetune.train', '--data', digits[0],
         '--out', str(tmp_path)], capture_output=True, text=True,
        cwd=str(tmp_path))
    assert result.returncode == 2
    assert result.stderr.strip().count('\n') == 0
    assert 'python -m finetune.fetch alexnet' in result.stderr


def test_cached_features_train_like_images(digits, tmp_path, capsys):
    """LeNet has no crops, so the head sees the same inputs either way:
    cached and uncached runs end with the same weights."""
    data, pretrained = digits
    common = ('--epochs', '2', '--freeze', 'conv1-conv2', '--replace',
              'ip1-ip2', '--log-interval', '0')
    run_train(*train_args(data, pretrained, tmp_path / 'images', *common))
    run_train(*train_args(data, pretrained, tmp_path / 'cached', *common,
                          '--cache-features'))
    err = capsys.readouterr().err
    assert 'train features: cached in' in err
    images = params(str(tmp_path / 'images' / 'model_final.npz'))
    cached = params(str(tmp_path / 'cached' / 'model_final.npz'))
    for name in images:
        for a, b in zip(images[name], cached[name]):
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
    assert read_log(tmp_path / 'images')[-1]['validation/main/accuracy'] \
        == read_log(tmp_path / 'cached')[-1]['validation/main/accuracy']
    # a second run reuses the cache
    run_train(*train_args(data, pretrained, tmp_path / 'cached', *common,
                          '--cache-features', '--overwrite'))
    assert 'train features: reusing' in capsys.readouterr().err


def test_cached_crop_features_are_the_trunk_on_those_crops(digits,
                                                          tmp_path):
    """LeNet converted with --resize 32 trains on 28x28 crops: each cached
    entry is the frozen conv1-conv2 output of that image's crop."""
    from finetune.weights.conversion import ConversionOptions
    from finetune.weights.conversion import convert_caffemodel
    from finetune.demo import LENET_DIR
    from finetune.data.feature_cache import crop_windows
    from finetune.data.folder import read_image_list
    data, _ = digits
    lenet = str(tmp_path / 'lenet32.npz')
    convert_caffemodel(
        os.path.join(LENET_DIR, 'lenet_iter_10000.caffemodel'), lenet,
        ConversionOptions(
            prototxt=os.path.join(LENET_DIR, 'lenet_deploy.prototxt'),
            scale=1 / 256, resize=(32, 32)))
    out = tmp_path / 'out'
    run_train(*train_args(data, lenet, out, '--epochs', '1', '--freeze',
                          'conv1-conv2', '--replace', 'ip1-ip2',
                          '--cache-features', '--cache-crops', '4'))
    cache_dir = out / 'feature_cache'
    train_file = [f for f in os.listdir(cache_dir) if f.startswith('train')]
    cached = np.load(str(cache_dir / train_file[0]), mmap_mode='r')
    entries, _ = read_image_list(str(out / 'train.txt'), data)
    model, _, prep = load_model(lenet)
    assert (prep.size, prep.crop_size) == ((32, 32), 28)
    assert cached.shape == (len(entries), 4, 50, 4, 4)
    for i in (0, len(entries) - 1):
        image = prep.image_array(os.path.join(data, entries[i][0]))
        windows = crop_windows(prep, i, 'random', 4)
        assert len(set(windows)) > 1
        crops = np.stack([prep.crop(image, window=w) for w in windows])
        with chainer.using_config('train', False):
            expected = model.forward(crops, stop=2).array
        np.testing.assert_allclose(cached[i], expected, rtol=1e-4,
                                   atol=1e-4)


def test_feature_cache_key_follows_weights_preprocessing_and_files(
        digits, tmp_path):
    from finetune.data.folder import scan_image_folder
    from finetune.data.feature_cache import cache_key
    from finetune.data.transforms import CaffePreprocess
    data, pretrained = digits
    model, _, prep = load_model(pretrained)
    entries = scan_image_folder(data)[0][:20]
    frozen = ['conv1', 'conv2']
    key = cache_key(model, frozen, prep, data, entries, 'random')
    assert key == cache_key(model, frozen, prep, data, entries, 'random')
    assert key != cache_key(model, frozen, prep, data, entries, 'center')
    assert key != cache_key(model, frozen, prep, data, entries, 'random',
                            count=5)
    other = CaffePreprocess(prep.size, prep.crop_size, [1.0], prep.scale,
                            prep.channels)
    assert key != cache_key(model, frozen, other, data, entries, 'random')
    model.conv2.W.array[0, 0, 0, 0] += 1
    assert key != cache_key(model, frozen, prep, data, entries, 'random')
    model.conv2.W.array[0, 0, 0, 0] -= 1
    path = os.path.join(data, entries[0][0])
    os.utime(path, ns=(1, 1))
    assert key != cache_key(model, frozen, prep, data, entries, 'random')


def test_cached_crops_are_drawn_like_training_crops():
    """Per image, ``count`` windows from the same draw as
    RandomCropConverter's, seeded by the image index (not the run)."""
    from finetune.data.feature_cache import crop_windows, take_crops
    from finetune.data.transforms import CaffePreprocess
    prep = CaffePreprocess((6, 7), 4, None)
    first = crop_windows(prep, 0, 'random', count=200)
    assert first == crop_windows(prep, 0, 'random', count=200)
    assert first != crop_windows(prep, 1, 'random', count=200)
    tops, lefts, mirrors = zip(*first)
    assert set(tops) == {0, 1, 2} and set(lefts) == {0, 1, 2, 3}
    assert set(mirrors) == {False, True}
    image = np.arange(2 * 6 * 7, dtype=np.float32).reshape(2, 6, 7)
    rng = np.random.RandomState(3)
    expected = prep.crop(image, train=True, rng=rng)
    window = prep.crop_window(True, np.random.RandomState(3))
    crops = take_crops(image, prep, [window, prep.crop_window()])
    assert crops.shape == (2, 2, 4, 4)
    assert np.array_equal(crops[0], expected)
    assert np.array_equal(crops[1], image[:, 1:5, 1:5])
    assert crop_windows(prep, 5, 'center') == [(1, 1, False)]
    assert crop_windows(CaffePreprocess((6, 7), None, None), 0,
                        'random') == [None]


def test_divergence_stops_with_one_line(digits, tmp_path):
    data, pretrained = digits
    result = subprocess.run(
        [sys.executable, '-m', 'finetune.train'] + train_args(
            data, pretrained, tmp_path, '--epochs', '3', '--lr', '1e6',
            '--replace', 'ip2'), capture_output=True, text=True)
    assert result.returncode == 2
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith('error: training diverged') and '--lr' in last


@pytest.mark.parametrize('sig', [signal.SIGINT, signal.SIGTERM])
def test_interrupt_stops_loader_workers(digits, tmp_path, sig):
    data, pretrained = digits
    # a test run started in the background (`cmd &` in a script) inherits
    # SIGINT ignored, and Python then leaves it ignored: reset it
    proc = subprocess.Popen(
        train_command(data, pretrained, tmp_path, '--epochs', '50'),
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        start_new_session=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    wait_for_a_snapshot(tmp_path)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    # SIGTERM (a scheduler's preemption) snapshots and exits 75 (README
    # "Batch jobs"); Ctrl-C exits 130
    status, said = ((75, 'terminated (SIGTERM)') if sig == signal.SIGTERM
                    else (130, 'interrupted'))
    assert proc.returncode == status, err[-2000:]
    assert said in err
    for _ in range(100):  # loader workers and the forkserver exit too
        try:
            os.killpg(proc.pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.1)
    else:
        os.killpg(proc.pid, signal.SIGKILL)
        pytest.fail('processes of the run were left behind')


def test_evaluation_accuracy_counts_images_not_batches():
    """5 images of 7 classes, batches of 4: the short last batch must weigh
    1/5, not 1/2 (Chainer averages batch means unless given weights), for
    top-1 and for top-5 alike."""
    from chainer.training.extensions import Evaluator
    from finetune.training.extensions import Classifier

    class Logits(chainer.Link):
        def forward(self, x):
            return chainer.functions.identity(x)

    # every image ranks the classes 6, 5, ..., 0; the targets' ranks are
    # 0, 4, 6, 5, 1: top-1 right once, top-5 right three times
    x = np.tile(np.arange(7, dtype=np.float32), (5, 1))
    t = np.array([6, 2, 0, 1, 5], np.int32)
    iterator = chainer.iterators.SerialIterator(
        chainer.datasets.TupleDataset(x, t), 4, repeat=False, shuffle=False)
    result = Evaluator(iterator, Classifier(Logits()))()
    assert result['main/accuracy'] == pytest.approx(1 / 5)
    assert result['main/top5'] == pytest.approx(3 / 5)


def test_float16_trains_resumes_exactly_and_saves_float32(digits, tmp_path):
    """--dtype float16: float16 weights in training (conv2 and ip1 trained
    in float16 here), float32 master weights and the loss scale in the
    snapshots, so a resumed run ends bitwise equal to a straight one; the
    model files are float32 and classify as well as a float32 run."""
    data, pretrained = digits
    common = ('--freeze', 'conv1', '--replace', 'ip2', '--dtype', 'float16',
              '--log-interval', '0')
    straight, resumed = tmp_path / 'straight', tmp_path / 'resumed'
    report = run_train(*train_args(data, pretrained, straight, '--epochs',
                                   '2', *common))
    run_train(*train_args(data, pretrained, resumed, '--epochs', '1',
                          *common))
    run_train(*train_args(data, pretrained, resumed, '--epochs', '2',
                          '--resume', 'auto', *common))
    a = params(str(straight / 'model_final.npz'))
    b = params(str(resumed / 'model_final.npz'))
    for name in a:
        for x, y in zip(a[name], b[name]):
            assert x.dtype == np.float32
            assert np.array_equal(x, y), name
    with np.load(latest_snapshot(str(straight))) as snapshot:
        weights = [k for k in snapshot.files
                   if k.endswith('predictor/net/conv2/W')]
        assert snapshot[weights[0]].dtype == np.float16
        masters = [k for k in snapshot.files if k.endswith('fp32_param')]
        assert masters and all(snapshot[k].dtype == np.float32
                               for k in masters)
        assert any(k.endswith('loss_scale') for k in snapshot.files)
    float32 = run_train(*train_args(
        data, pretrained, tmp_path / 'float32', '--epochs', '2',
        *common[:-4], '--log-interval', '0'))
    assert report['top1_accuracy'] >= float32['top1_accuracy'] - 0.05


def test_time_limit_stops_before_the_epochs(digits, tmp_path):
    """--time-limit stops at the first iteration past the limit (here the
    first: 1 microsecond is over as soon as one step has run), and the run
    still ends with model_final.npz, its evaluation and the stage times."""
    data, pretrained = digits
    argv = train_args(data, pretrained, tmp_path, '--epochs', '50',
                      '--log-interval', '1', '--time-limit', '1e-6',
                      '--replace', 'ip2')
    result = fit(config_from_args(build_parser().parse_args(argv)))
    with open(tmp_path / 'log') as f:
        log = json.load(f)
    assert [entry['iteration'] for entry in log] == [1]
    assert os.path.exists(result.model_final)
    assert result.metrics['n_examples'] > 0
    assert set(result.seconds) == {'scan', 'features', 'training',
                                   'evaluation'}
    assert all(s > 0 for s in result.seconds.values())
