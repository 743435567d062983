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
from tests.conftest import data_path
from tests.conftest import run_module as run


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
