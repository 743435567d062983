"""finetune.data.datasets: Chainer datasets over image lists."""
import logging
import os
import shutil

import numpy as np
import pytest
from PIL import Image

from finetune.common.errors import DataError
from finetune.data.datasets import ImagePathDataset
from finetune.data.datasets import LabeledImageDataset
from finetune.data.transforms import CaffePreprocess
from tests.support.photos import make_folder


@pytest.fixture
def small_dataset(tmp_path):
    root = str(tmp_path / 'images')
    entries = make_folder(root, {'a': 3, 'b': 3}, size=(48, 40))
    preprocess = CaffePreprocess(size=(32, 32), crop_size=24)
    return root, entries, preprocess


def caffe_input(path, size, crop, mean_bgr):
    """Caffe's test-time input written out step by step with PIL: RGB
    decoded, resized bilinearly to ``size`` (W, H), to BGR float, mean pixel
    subtracted, the centre ``crop`` square, as (3, crop, crop)."""
    rgb = Image.open(path).convert('RGB').resize(size, Image.BILINEAR)
    bgr = np.asarray(rgb, np.float32)[:, :, ::-1] - np.float32(mean_bgr)
    top, left = (size[1] - crop) // 2, (size[0] - crop) // 2
    return bgr[top:top + crop, left:left + crop].transpose(2, 0, 1)


def test_dataset_returns_preprocessed_images_and_labels(small_dataset):
    root, entries, preprocess = small_dataset
    dataset = LabeledImageDataset(root, entries, preprocess)

    assert len(dataset) == 6
    for i, (path, label) in enumerate(entries):
        image, read_label = dataset[i]
        assert image.dtype == np.float32
        assert image.shape == (3, 24, 24)
        assert read_label.dtype == np.int32
        assert read_label == label
        np.testing.assert_allclose(
            image, caffe_input(os.path.join(root, path), (32, 32), 24,
                               (104, 117, 123)), atol=1e-4)
    batch = dataset[1:3]
    assert [int(label) for _, label in batch] == [0, 0]


def test_dataset_survives_a_file_deleted_after_construction(small_dataset,
                                                            caplog):
    root, entries, preprocess = small_dataset
    dataset = LabeledImageDataset(root, entries, preprocess)
    os.remove(os.path.join(root, entries[2][0]))

    with caplog.at_level(logging.WARNING, logger='finetune.data.datasets'):
        image, label = dataset[2]
        again, _ = dataset[2]

    np.testing.assert_array_equal(image, dataset[3][0])
    np.testing.assert_array_equal(again, image)
    assert label == entries[3][1]
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 1
    assert entries[2][0] in warnings[0]


def test_dataset_fails_when_every_file_is_gone(small_dataset):
    root, entries, preprocess = small_dataset
    dataset = LabeledImageDataset(root, entries, preprocess)
    shutil.rmtree(root)
    with pytest.raises(DataError, match='is the data folder still there'):
        dataset[0]


def test_image_path_dataset_gives_zeros_and_the_problem(small_dataset,
                                                        tmp_path):
    root, entries, preprocess = small_dataset
    text = tmp_path / 'text.jpg'
    text.write_text('not a photo')
    dataset = ImagePathDataset([os.path.join(root, entries[0][0]),
                                str(text)], preprocess)
    image, error = dataset[0]
    assert error == '' and image.shape == (3, 24, 24)
    blank, error = dataset[1]
    assert error == '%s: not-image' % text
    assert not blank.any() and blank.shape == (3, 24, 24)
