"""Caffe's 10-crop oversample against an independent numpy reference."""
import os

import numpy as np

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
