"""Caffe's 10-crop oversample against an independent numpy reference."""
import csv
import os

import chainer
import numpy as np
import pytest

from finetune.data.transforms import CaffePreprocess
from finetune.inference.tta import oversample

PHOTO = os.path.join(os.path.dirname(__file__), '..', 'assets', 'cat.jpg')


def caffe_oversample(images, crop_dims):
    """caffe.io.oversample (python/caffe/io.py), images (N, H, W, K)."""
    im_shape = np.array(images[0].shape)
    crop_dims = np.array(crop_dims)
    im_center = im_shape[:2] / 2.0
    h_indices = (0, im_shape[0] - crop_dims[0])
    w_indices = (0, im_shape[1] - crop_dims[1])
    crops_ix = np.empty((5, 4), dtype=int)
    curr = 0
    for i in h_indices:
        for j in w_indices:
            crops_ix[curr] = (i, j, i + crop_dims[0], j + crop_dims[1])
            curr += 1
    crops_ix[4] = np.tile(im_center, (1, 2)) + np.concatenate([
        -crop_dims / 2.0, crop_dims / 2.0])
    crops_ix = np.tile(crops_ix, (2, 1))
    crops = np.empty((10 * len(images), crop_dims[0], crop_dims[1],
                      im_shape[-1]), dtype=np.float32)
    ix = 0
    for im in images:
        for crop in crops_ix:
            crops[ix] = im[crop[0]:crop[2], crop[1]:crop[3], :]
            ix += 1
        crops[ix - 5:ix] = crops[ix - 5:ix, :, ::-1, :]
    return crops


def test_oversample_equals_caffes_on_a_photo():
    preprocess = CaffePreprocess((256, 256), 227)
    array = preprocess.image_array(PHOTO)
    ours = oversample(array, 227)
    hwc = array.transpose(1, 2, 0)
    reference = caffe_oversample([hwc], (227, 227)).transpose(0, 3, 1, 2)
    assert ours.shape == (10, 3, 227, 227)
    np.testing.assert_array_equal(ours, reference)
    # the centre crop is the single-crop evaluation's
    np.testing.assert_array_equal(ours[4], preprocess(PHOTO))


def test_tta_probabilities_are_the_mean_of_the_ten_crops(alexnet_npz):
    import finetune
    single = finetune.load(alexnet_npz)
    tta = finetune.load(alexnet_npz, tta=True)
    crops = oversample(single.preprocess.image_array(PHOTO), 227)
    expected = single.probabilities(crops).mean(axis=0)
    _, probs = tta.predict([PHOTO])
    np.testing.assert_allclose(probs[0], expected, rtol=1e-6, atol=1e-7)
    assert not np.allclose(probs[0], single.predict([PHOTO])[1][0],
                           atol=1e-4)


def test_crops_must_fit_in_the_resized_image():
    from finetune.inference.tta import crops_problem
    assert crops_problem(CaffePreprocess((32, 32), 28)) is None
    assert crops_problem(CaffePreprocess((28, 28), 28)) is None
    assert 'whole images' in crops_problem(CaffePreprocess((28, 28), None))
    assert 'do not fit' in crops_problem(CaffePreprocess((32, 24), 28))


@pytest.fixture(scope='module')
def lenet_cropped(tmp_path_factory):
    """The real LeNet converted to resize images to 32x32 and crop 28x28."""
    from finetune.demo import convert_lenet
    return convert_lenet(str(tmp_path_factory.mktemp('lenet32')),
                         resize=(32, 32))


def reference_probabilities(model_path, paths):
    """(tta, centre): per image, the mean softmax over Caffe's ten crops cut
    here by slicing the resized image (corners, centre, their mirrors),
    and the centre crop's softmax; float64 (N, n_classes)."""
    from finetune.models.model_file import load_model
    model, _, prep = load_model(model_path)
    (height, width), side = prep.size, prep.crop_size
    tops = (0, 0, height - side, height - side, (height - side) // 2)
    lefts = (0, width - side, 0, width - side, (width - side) // 2)
    tta, centre = [], []
    for path in paths:
        image = prep.image_array(path)
        crops = [image[:, t:t + side, l:l + side] for t, l in zip(tops,
                                                                   lefts)]
        crops += [crop[:, :, ::-1] for crop in crops]
        with chainer.using_config('train', False), \
                chainer.no_backprop_mode():
            logits = model(np.stack(crops).astype(np.float32)).array
        logits = logits.astype(np.float64)
        probs = np.exp(logits - logits.max(axis=1, keepdims=True))
        probs /= probs.sum(axis=1, keepdims=True)
        tta.append(probs.mean(axis=0))
        centre.append(probs[4])
    return np.array(tta), np.array(centre)


def test_predict_tta_writes_the_mean_over_the_ten_crops(lenet_cropped,
                                                       digits, tmp_path):
    import finetune
    from finetune import predict
    data, _ = digits
    images = sorted(os.path.join(data, d, f) for d in ('3', '8')
                    for f in sorted(os.listdir(os.path.join(data, d)))[:4])
    out = tmp_path / 'preds.csv'
    assert predict.main(['--model', lenet_cropped, *images, '-o', str(out),
                         '--top', '10', '--tta', '-j', '0']) == 0
    with open(str(out)) as f:
        rows = list(csv.DictReader(f))
    names = finetune.load(lenet_cropped).class_names
    written = np.array([[dict(cell.split(':') for cell in
                              row['top_10'].split(';'))[name]
                         for name in names] for row in rows], float)
    assert [row['path'] for row in rows] == images
    tta, centre = reference_probabilities(lenet_cropped, images)
    np.testing.assert_allclose(written, tta, atol=1e-4)
    assert np.abs(tta - centre).max() > 1e-2  # the crops do differ


def test_train_tta_evaluates_with_the_ten_crops(lenet_cropped, digits,
                                                tmp_path):
    from finetune.data.folder import read_image_list
    from tests.support.training import run_train
    from tests.support.training import train_args
    data, _ = digits
    out = tmp_path / 'out'
    metrics = run_train(*train_args(
        data, lenet_cropped, out, '--epochs', '1', '--replace', 'ip2',
        '--freeze', 'conv1-conv2', '--tta'))
    val, _ = read_image_list(str(out / 'val.txt'), data)
    paths = [os.path.join(data, path) for path, _ in val]
    labels = np.array([label for _, label in val])
    tta, centre = reference_probabilities(str(out / 'model_final.npz'),
                                          paths)
    assert metrics['n_examples'] == len(val)
    assert metrics['top1_accuracy'] == np.mean(tta.argmax(1) == labels)
    with open(str(out / 'highest_loss.csv')) as f:
        rows = list(csv.DictReader(f))
    index = {path: i for i, (path, _) in enumerate(val)}
    p_true = np.array([float(row['p_true']) for row in rows])
    rows_of = [index[row['path']] for row in rows]
    np.testing.assert_allclose(p_true, tta[rows_of, labels[rows_of]],
                               rtol=1e-4, atol=1e-5)
    assert np.abs(p_true - centre[rows_of, labels[rows_of]]).max() > 1e-3
