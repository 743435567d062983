"""finetune.inference.batch, also through ``python -m finetune.predict``."""
import csv
import os
import shutil

import chainer
import numpy as np
import pytest

import finetune
from finetune.caffe.importer import import_caffemodel
from finetune.data.resources import imagenet_class_names
from finetune.models import AlexNet
from tests.support.paths import data_path
from tests.support.processes import run_module as run


def opencv_probabilities(caffemodel, x):
    """Softmax of OpenCV's own run of the BVLC deploy net on ``caffemodel``
    for inputs ``x`` (N, 3, 227, 227): the independent reference."""
    import cv2
    from finetune.weights.random_model import ALEXNET_DEPLOY
    net = cv2.dnn.readNetFromCaffe(ALEXNET_DEPLOY, caffemodel)
    net.setInput(np.ascontiguousarray(x, np.float32))
    logits = net.forward('fc8').reshape(len(x), -1).astype(np.float64)
    e = np.exp(logits - logits.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def test_predict_prints_top5_with_imagenet_names(alexnet_npz,
                                                 alexnet_caffemodels):
    """The printed lines are the top 5 of OpenCV's run of the caffemodel
    the model file was converted from, named by Caffe's synset order."""
    result = run('finetune.predict', '--model', alexnet_npz,
                 data_path('cat.jpg'), '--loaderjob', '0')
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert lines[0].endswith('cat.jpg') and len(lines) == 6
    x = finetune.load(alexnet_npz).preprocess(data_path('cat.jpg'))
    probs = opencv_probabilities(alexnet_caffemodels['v1'], x[np.newaxis])[0]
    best = np.argsort(-probs)[:5]
    names = imagenet_class_names()
    assert names[281] == 'tabby, tabby cat'  # Caffe's synset order
    for line, index in zip(lines[1:], best):
        prob, name = line.split(None, 1)
        assert name == names[index]
        assert float(prob) == pytest.approx(probs[index], abs=1e-4)


def test_predict_matches_direct_import(alexnet_npz, alexnet_caffemodels):
    """Both backends of the converted file agree with OpenCV on the
    original caffemodel and with a direct import into the BVLC net."""
    direct = AlexNet()
    import_caffemodel(direct, alexnet_caffemodels['v2'])
    for backend in ('opencv', 'chainer'):
        predictor = finetune.load(alexnet_npz, backend=backend)
        x = predictor.preprocess(data_path('fish-bike.jpg'))[np.newaxis]
        with chainer.using_config('train', False):
            expected = chainer.functions.softmax(direct(x)).array
        _, probs = predictor.predict([data_path('fish-bike.jpg')])
        assert np.abs(probs - expected).max() < 1e-6
        np.testing.assert_allclose(
            probs, opencv_probabilities(alexnet_caffemodels['v2'], x),
            atol=1e-5)


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
    result = run('finetune.predict', '--model', npz, str(folder), '--batchsize',
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


def test_print_predictions_writes_everything_to_out(alexnet_npz):
    """``out`` receives each image line and its classes (it used to get
    only the classes; the image line went to stdout)."""
    import io
    from finetune.inference.batch import predict_paths, print_predictions
    predictor = finetune.load(alexnet_npz)
    out = io.StringIO()
    rows = predict_paths(predictor, [data_path('cat.jpg')], loaderjob=0,
                         progress=False)
    assert print_predictions(rows, predictor.class_names, 3, out=out) == 0
    lines = out.getvalue().splitlines()
    assert lines[0] == data_path('cat.jpg') and len(lines) == 4


def test_outputs_never_overwrite_inputs(alexnet_npz, tmp_path):
    """predict --out naming the model or an input image, and export naming
    the model, are refused and leave the files as they were."""
    image = tmp_path / 'cat.jpg'
    shutil.copy(data_path('cat.jpg'), image)
    model = tmp_path / 'model.npz'
    shutil.copy(alexnet_npz, model)
    before = {p: p.read_bytes() for p in (image, model)}
    for target in (model, image):
        result = run('finetune.predict', '--model', str(model), str(image),
                     '-o', str(target))
        assert result.returncode == 2
        assert result.stderr.strip() == (
            'error: --out %s: that is an input of this command; choose '
            'another output file' % target)
    result = run('finetune.export', '--model', str(model), '-o', str(model))
    assert result.returncode == 2 and 'is an input' in result.stderr
    assert {p: p.read_bytes() for p in before} == before


def test_predict_lists_a_folder_as_training_scans_it(tmp_path):
    """A symlinked class folder is followed and hidden files and other
    extensions are left out, as in training's scan."""
    from finetune.data.folder import scan_image_folder
    from finetune.inference.batch import list_images
    root = tmp_path / 'photos'
    (root / 'cat').mkdir(parents=True)
    shutil.copy(data_path('cat.jpg'), root / 'cat' / 'a.jpg')
    shutil.copy(data_path('cat.jpg'), root / 'cat' / '.hidden.jpg')
    (root / 'cat' / 'notes.txt').write_text('not an image')
    elsewhere = tmp_path / 'elsewhere'
    elsewhere.mkdir()
    shutil.copy(data_path('fish-bike.jpg'), elsewhere / 'b.jpg')
    os.symlink(elsewhere, root / 'bike')
    listed = sorted(os.path.relpath(p, root) for p in list_images([root]))
    assert listed == [os.path.join('bike', 'b.jpg'),
                      os.path.join('cat', 'a.jpg')]
    scanned, _ = scan_image_folder(str(root))
    assert sorted(path for path, _ in scanned) == listed


# -- batch jobs: chunks, resumption, features, hostile names ---------------

import contextlib
import errno
import io
import random
import signal
import subprocess
import time

from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st

from finetune.common.errors import FinetuneError
from finetune.common.fileio import read_csv_cell
from finetune.inference.batch import label_images
from finetune.inference.journal import journal_path
from tests.support.predict_jobs import HOSTILE_NAMES
from tests.support.predict_jobs import job_inputs
from tests.support.predict_jobs import lenet_npz  # noqa: F401 (fixture)
from tests.support.predict_jobs import photos  # noqa: F401 (fixture)
from tests.support.predict_jobs import predict_command
from tests.support.predict_jobs import reference  # noqa: F401 (fixture)

def label_job(model, photos, out):
    """label_images in-process on the inputs of :func:`job_inputs`."""
    where, inputs = job_inputs(photos)
    with contextlib.chdir(where):
        return label_images(model, inputs, out, 2, 0, chunk_rows=2)


def test_job_csv_escapes_formulas_and_undecodable_names(reference, photos):
    csv_bytes, _ = reference
    rows = list(csv.reader(io.StringIO(csv_bytes.decode('utf-8'),
                                       newline='')))
    paths = [row[0] for row in rows[1:]]
    assert len(paths) == 35
    assert paths[:5] == ["'" + name for name in HOSTILE_NAMES]
    assert os.path.join('.', 'bad\\xff.png') in paths
    broken = [row for row in rows if row[0].endswith('broken.png')][0]
    assert broken[1] == '' and 'broken.png' in broken[4]


def test_features_npy_rows_match_the_api_and_skipped_rows_are_nan(
        reference, lenet_npz, photos):
    csv_bytes, features = reference
    rows = list(csv.DictReader(io.StringIO(csv_bytes.decode('utf-8'),
                                           newline='')))
    assert features.dtype == np.float32 and features.shape == (35, 500)
    model = finetune.load(lenet_npz)
    for i, row in enumerate(rows):
        if row['error']:
            assert np.isnan(features[i]).all()
            continue
        path = os.path.join(job_inputs(photos)[0], read_csv_cell(
            row['path']).replace('\\xff', os.fsdecode(b'\xff')))
        np.testing.assert_allclose(features[i],
                                   model.features(path, 'ip1')[0],
                                   rtol=0, atol=1e-5)


def test_resume_after_sigkill_at_random_points_is_byte_identical(
        lenet_npz, photos, reference, tmp_path):
    """SIGKILL once the journal has grown past a random size (several
    seeds), then the same command: the CSV and the features are those of
    the uninterrupted run; no temporaries are left."""
    csv_bytes, features = reference
    where = job_inputs(photos)[0]
    for seed in range(4):
        out = tmp_path / ('run%d' % seed) / 'preds.csv'
        out.parent.mkdir()
        command = predict_command(lenet_npz, photos, out, '--features',
                                  'ip1')
        threshold = random.Random(seed).randrange(1, len(csv_bytes))
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL,
                                   stderr=subprocess.DEVNULL, cwd=where)
        journal = journal_path(str(out))
        while process.poll() is None:
            if os.path.exists(journal) and \
                    os.path.getsize(journal) >= threshold:
                process.kill()
                break
            time.sleep(0.001)
        process.wait()
        resumed = subprocess.run(command, capture_output=True, text=True,
                                 cwd=where)
        assert resumed.returncode == 0, resumed.stderr
        assert out.read_bytes() == csv_bytes, seed
        np.testing.assert_array_equal(np.load(str(out)[:-4] + '.npy'),
                                      features)
        assert sorted(os.listdir(out.parent)) == ['preds.csv', 'preds.npy']


@pytest.fixture(scope='module')
def full_journal(lenet_npz, photos, tmp_path_factory):
    """The journal of a complete run, as left by a run killed just before
    writing the CSV: (bytes, csv bytes of the run)."""
    from finetune.inference import batch
    out = str(tmp_path_factory.mktemp('journal') / 'preds.csv')

    def killed(self):
        raise KeyboardInterrupt
    original = batch.Job.finish
    batch.Job.finish = killed
    try:
        with pytest.raises(KeyboardInterrupt):
            label_job(lenet_npz, photos, out)
    finally:
        batch.Job.finish = original
    data = open(journal_path(out), 'rb').read()
    os.remove(journal_path(out))
    assert label_job(lenet_npz, photos, out) == 0
    return data, open(out, 'rb').read()


@settings(derandomize=True, max_examples=25, deadline=None)
@given(cut=st.floats(0, 1))
def test_a_journal_cut_anywhere_resumes_byte_identically(
        cut, full_journal, lenet_npz, photos, tmp_path_factory):
    """A kill leaves the journal cut at any byte (mid-chunk, mid-cell,
    mid-header): the complete chunks are kept, the rest labelled again."""
    data, expected = full_journal
    out = str(tmp_path_factory.mktemp('cut') / 'preds.csv')
    with open(journal_path(out), 'wb') as f:
        f.write(data[:int(cut * len(data))])
    assert label_job(lenet_npz, photos, out) == 0
    assert open(out, 'rb').read() == expected
    assert not os.path.exists(journal_path(out))


def test_a_partial_run_of_another_model_or_list_is_refused(
        lenet_npz, lenet_files, photos, full_journal, tmp_path):
    """Named in one line: what differs; the journal stays as it was and no
    CSV is written."""
    from finetune.weights.conversion import ConversionOptions
    from finetune.weights.conversion import convert_caffemodel
    data, _ = full_journal
    out = tmp_path / 'preds.csv'
    journal = journal_path(str(out))
    other = convert_caffemodel(
        lenet_files['caffemodel'], str(tmp_path / 'other.npz'),
        ConversionOptions(prototxt=lenet_files['prototxt'],
                          labels=lenet_files['labels'], scale=1 / 255))
    where, inputs = job_inputs(photos)
    cases = [(other, inputs, [], 'model was sha1 '),
             (lenet_npz, inputs[1:], [], 'images was 35 files'),
             (lenet_npz, inputs, ['--top', '3'], 'top was 5, now 3'),
             (lenet_npz, inputs, ['--features', 'ip1'],
              'features was none, now ip1')]
    for model, images, extra, differs in cases:
        with open(journal, 'wb') as f:
            f.write(data[:len(data) // 2])
        result = run('finetune.predict', '--model', model, '-o', str(out),
                     '-j', '0', *extra, '--', *images, cwd=where)
        assert result.returncode == 2, result.stderr
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith('error: '), lines
        assert differs in lines[0] and journal in lines[0], lines[0]
        assert open(journal, 'rb').read() == data[:len(data) // 2]
        assert not out.exists()
    os.remove(journal)
    result = run('finetune.predict', '--model', lenet_npz, photos, '-o',
                 str(out), '--resume')
    assert result.returncode == 2 and '--resume' in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_ctrl_c_message_names_what_continues_and_it_does(
        lenet_npz, photos, reference, tmp_path):
    csv_bytes, _ = reference
    out = tmp_path / 'preds.csv'
    command = predict_command(lenet_npz, photos, out, '--features', 'ip1')
    where = job_inputs(photos)[0]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, text=True, cwd=where)
    journal = journal_path(str(out))
    while process.poll() is None and not (
            os.path.exists(journal) and os.path.getsize(journal) > 400):
        time.sleep(0.001)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate()
    if process.returncode == 0:
        pytest.skip('the run ended before the signal')
    assert process.returncode == 130
    assert stderr.strip().splitlines()[-1] == (
        'interrupted; the rows written so far are kept; run the same '
        'command again to label the rest')
    resumed = subprocess.run(command, capture_output=True, text=True,
                             cwd=where)
    assert resumed.returncode == 0, resumed.stderr
    assert 'resuming' in resumed.stderr
    assert out.read_bytes() == csv_bytes


def test_stale_temporaries_of_the_same_output_are_removed(lenet_npz,
                                                          tmp_path):
    out = tmp_path / 'preds.csv'
    stale = [tmp_path / '.preds.csv.k1ll3d.tmp.csv',
             tmp_path / '.preds.npy.x9.tmp.npy']
    unrelated = tmp_path / '.other.csv.k1ll3d.tmp.csv'
    for path in stale + [unrelated]:
        path.write_text('left by a killed run')
    result = run('finetune.predict', '--model', lenet_npz,
                 data_path('cat.jpg'), '-o', str(out), '--features', 'ip1',
                 '-j', '0')
    assert result.returncode == 0, result.stderr
    assert not any(path.exists() for path in stale)
    assert unrelated.exists()


def test_no_progress_bar_after_the_error_line(lenet_npz, photos, tmp_path,
                                              monkeypatch, capsys):
    """A write failing mid-run (a full disk) ends in the error line: the
    progress bar is closed before it, not redrawn after it."""
    from finetune import predict
    from finetune.inference import journal
    calls = []
    original = journal.Journal.append

    def full_disk(self, rows):
        calls.append(1)
        if len(calls) == 3:
            raise OSError(errno.ENOSPC, 'No space left on device',
                          self.path)
        return original(self, rows)
    monkeypatch.setattr(journal.Journal, 'append', full_disk)
    with pytest.raises(SystemExit) as exit:
        predict.main(['--model', lenet_npz, photos, '-o',
                      str(tmp_path / 'preds.csv'), '-B', '2', '--chunk',
                      '2', '-j', '0'])
    assert exit.value.code == 2
    err = capsys.readouterr().err
    assert err.rstrip('\n').endswith('No space left on device: %r'
                                     % journal_path(str(tmp_path /
                                                        'preds.csv')))
    tail = err.rstrip('\n').rsplit('\n', 1)[-1]
    assert tail.startswith('error: ') and '\r' not in tail, repr(tail)


def test_non_utf8_names_are_printed_escaped(lenet_npz, tmp_path):
    """Without --out the names are printed (it used to raise
    UnicodeEncodeError); a broken one is reported escaped."""
    folder = os.fsencode(tmp_path / 'photos')
    os.mkdir(folder)
    shutil.copy(data_path('cat.jpg'), os.path.join(folder, b'bad\xff.jpg'))
    with open(os.path.join(folder, b'worse\xfe.png'), 'wb') as f:
        f.write(b'not an image')
    result = run('finetune.predict', '--model', lenet_npz,
                 os.fsdecode(folder), '-j', '0')
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[0].endswith('bad\\xff.jpg')
    assert 'worse\\xfe.png: skipped' in result.stderr
    assert 'Traceback' not in result.stderr


def test_a_fifo_in_the_folder_is_skipped_and_a_named_one_refused(
        lenet_npz, tmp_path):
    folder = tmp_path / 'photos'
    folder.mkdir()
    shutil.copy(data_path('cat.jpg'), folder / 'cat.jpg')
    os.mkfifo(folder / 'pipe.jpg')
    out = tmp_path / 'preds.csv'
    result = run('finetune.predict', '--model', lenet_npz, str(folder),
                 '-o', str(out), '-j', '0', timeout=120)
    assert result.returncode == 0, result.stderr
    rows = list(csv.DictReader(open(out)))
    assert [r['path'] for r in rows] == [str(folder / 'cat.jpg')]
    result = run('finetune.predict', '--model', lenet_npz,
                 str(folder / 'pipe.jpg'), timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip() == 'error: %s: not a regular file (a ' \
        'FIFO)' % (folder / 'pipe.jpg')


@pytest.mark.parametrize('option', [['-B', '0'], ['-B', '-1'],
                                    ['--top', '0'], ['-j', '-1'],
                                    ['--chunk', '0'],
                                    ['--features', 'nope']])
def test_bad_predict_options_are_refused_naming_them(lenet_npz, tmp_path,
                                                    option):
    """argparse's usage may come first; the error line names the option
    and nothing is written."""
    out = tmp_path / 'preds.csv'
    result = run('finetune.predict', '--model', lenet_npz,
                 data_path('cat.jpg'), '-o', str(out), *option)
    assert result.returncode == 2
    last = result.stderr.strip().splitlines()[-1]
    assert option[0] in last or 'features' in last, result.stderr
    assert 'Traceback' not in result.stderr
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize('name,value', [('batch_size', 0),
                                        ('batch_size', -1),
                                        ('batch_size', 2.5),
                                        ('top', 0), ('loaderjob', -1),
                                        ('chunk_rows', 0)])
def test_label_images_refuses_bad_arguments_by_name(lenet_npz, tmp_path,
                                                    name, value):
    """``batch_size=0`` used to give a traceback, -1 an empty result."""
    out = tmp_path / 'preds.csv'
    with pytest.raises(FinetuneError, match='^%s: expected an integer'
                       % name):
        label_images(lenet_npz, [data_path('cat.jpg')], str(out),
                     **{name: value})
    assert os.listdir(tmp_path) == []


def test_outputs_that_cannot_work_are_refused_before_labelling(lenet_npz,
                                                               tmp_path):
    """A folder as --out, and --features whose .npy would be the CSV
    itself: refused in one line, nothing written (the folder case used to
    fail only at the end, after labelling everything)."""
    folder = tmp_path / 'out.csv'
    folder.mkdir()
    for out, extra, expected in ((folder, [], 'is a folder'),
                                 (tmp_path / 'preds.npy',
                                  ['--features', 'ip1'], '--features')):
        result = run('finetune.predict', '--model', lenet_npz,
                     data_path('cat.jpg'), '-o', str(out), *extra)
        assert result.returncode == 2, result.stderr
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and expected in lines[0], lines
        assert sorted(os.listdir(tmp_path)) == ['out.csv']
        assert os.listdir(folder) == []


def test_a_new_output_folder_is_created(lenet_npz, tmp_path):
    out = tmp_path / 'new' / 'deeper' / 'preds.csv'
    result = run('finetune.predict', '--model', lenet_npz,
                 data_path('cat.jpg'), '-o', str(out), '-j', '0')
    assert result.returncode == 0, result.stderr
    assert os.listdir(out.parent) == ['preds.csv']
