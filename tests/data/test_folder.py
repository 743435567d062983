"""finetune.data.folder (and finetune.data.images) on real image files."""
import csv
import io
import os
import random
import shutil
import struct
import zlib

import numpy as np
import pytest

from tests.support.paths import data_path
from tests.support.photos import make_folder
from tests.support.photos import noise_image
from tests.support.photos import write_image
from PIL import Image

from finetune.data import folder as data
from finetune.common.errors import DataError

PHOTO = data_path('fish-bike.jpg')


def corrupt_png_bytes():
    """A PNG whose signature and IHDR are intact but whose pixel data is
    garbage (with a matching CRC, so only decoding can tell)."""
    buffer = io.BytesIO()
    noise_image(1).save(buffer, 'PNG')
    png = buffer.getvalue()
    at = png.index(b'IDAT')
    length = struct.unpack('>I', png[at - 4:at])[0]
    garbage = np.random.RandomState(2).bytes(length)
    crc = struct.pack('>I', zlib.crc32(b'IDAT' + garbage))
    return png[:at + 4] + garbage + crc + png[at + 8 + length:]


# --- scanning and label files ----------------------------------------------

def test_scan_sorts_classes_and_ignores_hidden_files(tmp_path):
    root = str(tmp_path)
    write_image(os.path.join(root, 'zebra', 'z1.jpg'))
    write_image(os.path.join(root, 'apple', 'a1.png'), format='PNG')
    write_image(os.path.join(root, 'apple', 'deep', 'er', 'a2.JPG'),
                format='JPEG')
    write_image(os.path.join(root, 'mango', 'm1.jpeg'))
    # ignored: hidden files and folders, non-images, files at the top level
    write_image(os.path.join(root, 'apple', '.hidden.jpg'))
    write_image(os.path.join(root, 'apple', '.thumbs', 't.jpg'))
    write_image(os.path.join(root, '.cache', 'c.jpg'))
    write_image(os.path.join(root, 'top.jpg'))
    (tmp_path / 'apple' / 'notes.txt').write_text('not-image')
    (tmp_path / 'zebra' / '.DS_Store').write_bytes(b'\0\1')

    entries, class_names = data.scan_image_folder(root)

    assert class_names == ['apple', 'mango', 'zebra']
    assert entries == [('apple/a1.png', 0), ('apple/deep/er/a2.JPG', 0),
                       ('mango/m1.jpeg', 1), ('zebra/z1.jpg', 2)]


def test_scan_needs_two_classes_with_images(tmp_path):
    write_image(str(tmp_path / 'only' / 'a.jpg'))
    (tmp_path / 'empty').mkdir()
    with pytest.raises(DataError) as error:
        data.scan_image_folder(str(tmp_path))
    assert str(tmp_path) in str(error.value)
    assert 'at least 2' in str(error.value)


def test_scan_of_a_missing_folder_is_a_data_error(tmp_path):
    with pytest.raises(DataError, match='not a folder'):
        data.scan_image_folder(str(tmp_path / 'nope'))


def test_label_file_round_trip_with_class_names(tmp_path):
    entries = [('b/with space.jpg', 1), ('a/x.jpg', 0), ('c/y.png', 2)]
    label_path = str(tmp_path / 'lists' / 'train.txt')
    data.write_image_list(label_path, entries)
    data.write_class_names(str(tmp_path / 'lists' / 'labels.txt'),
                           ['cat', 'dog', 'fish'])

    read_entries, class_names = data.read_image_list(label_path,
                                                     str(tmp_path))

    assert read_entries == entries
    assert class_names == ['cat', 'dog', 'fish']
    assert open(label_path).read().splitlines()[0] == 'b/with space.jpg 1'


def test_label_file_without_labels_txt_names_classes_by_number(tmp_path):
    label_path = str(tmp_path / 'list.txt')
    with open(label_path, 'w') as f:
        f.write('a.jpg 0\n\n  b.jpg   3  \n')
    entries, class_names = data.read_image_list(label_path, str(tmp_path))
    assert entries == [('a.jpg', 0), ('b.jpg', 3)]
    assert class_names == ['0', '1', '2', '3']


@pytest.mark.parametrize('bad_line', ['no_label.jpg', 'a.jpg cat',
                                      'a.jpg -1', 'a.jpg 1.5'])
def test_malformed_label_line_names_file_and_line(tmp_path, bad_line):
    label_path = str(tmp_path / 'list.txt')
    with open(label_path, 'w') as f:
        f.write('a.jpg 0\nb.jpg 1\n%s\n' % bad_line)
    with pytest.raises(DataError) as error:
        data.read_image_list(label_path, str(tmp_path))
    message = str(error.value)
    assert message.startswith('%s:3:' % label_path)
    assert bad_line in message
    assert '\n' not in message


def test_labels_txt_with_too_few_names_is_an_error(tmp_path):
    label_path = str(tmp_path / 'list.txt')
    with open(label_path, 'w') as f:
        f.write('a.jpg 0\nb.jpg 2\n')
    data.write_class_names(str(tmp_path / 'labels.txt'), ['x', 'y'])
    with pytest.raises(DataError, match='labels.txt: names 2 classes'):
        data.read_image_list(label_path, str(tmp_path))


# --- stratified split -------------------------------------------------------

SPLIT_COUNTS = {0: 10, 1: 7, 2: 1, 3: 2, 4: 3}
# round-half-up(n * 0.3), but at least one image stays in train
EXPECTED_VAL_COUNTS = {0: 3, 1: 2, 2: 0, 3: 1, 4: 1}


def split_entries():
    return [('c%d/%02d.jpg' % (label, k), label)
            for label, count in SPLIT_COUNTS.items() for k in range(count)]


def test_stratified_split_proportions_per_class():
    entries = split_entries()
    train, val = data.stratified_split(entries, 0.3, seed=0)

    for label, count in SPLIT_COUNTS.items():
        n_val = sum(1 for _, l in val if l == label)
        n_train = sum(1 for _, l in train if l == label)
        assert n_val == EXPECTED_VAL_COUNTS[label]
        assert n_train == count - n_val
    assert not set(train) & set(val)
    assert sorted(train + val) == sorted(entries)


def test_stratified_split_keeps_one_image_per_class_in_train():
    # 0.75: 10 -> 8 (7.5 rounds up), 7 -> 5, 1 -> 0 (stays in train),
    # 2 -> 1 (not 2), 3 -> 2
    train, val = data.stratified_split(split_entries(), 0.75, seed=0)
    val_counts = {label: sum(1 for _, l in val if l == label)
                  for label in SPLIT_COUNTS}
    assert val_counts == {0: 8, 1: 5, 2: 0, 3: 1, 4: 2}
    assert sorted({label for _, label in train}) == sorted(SPLIT_COUNTS)


def test_stratified_split_is_deterministic_and_order_independent():
    entries = split_entries()
    shuffled = list(entries)
    random.Random(5).shuffle(shuffled)
    assert shuffled != entries

    first = data.stratified_split(entries, 0.3, seed=7)
    assert data.stratified_split(shuffled, 0.3, seed=7) == first
    others = [data.stratified_split(entries, 0.3, seed=s)[1]
              for s in range(8, 13)]
    assert any(val != first[1] for val in others)


def test_stratified_split_zero_fraction_keeps_everything_in_train():
    entries = split_entries()
    train, val = data.stratified_split(entries, 0.0, seed=0)
    assert val == []
    assert train == sorted(entries)


def test_stratified_split_rejects_a_fraction_of_one():
    with pytest.raises(ValueError):
        data.stratified_split(split_entries(), 1.0, seed=0)


# --- verification -----------------------------------------------------------

@pytest.fixture
def mixed_folder(tmp_path):
    """Good images in unusual modes and four kinds of broken files."""
    root = tmp_path / 'images'
    good = {
        'good/gray.jpg': lambda p: write_image(p, 1, mode='L'),
        'good/rgba.png': lambda p: write_image(p, 2, mode='RGBA'),
        'good/cmyk.jpg': lambda p: write_image(p, 3, mode='CMYK'),
        'good/palette.png': lambda p: write_image(p, 4, mode='P'),
        'good/photo.jpg': lambda p: shutil.copy(PHOTO, p),
    }
    for relative, write in good.items():
        os.makedirs(os.path.dirname(str(root / relative)), exist_ok=True)
        write(str(root / relative))
    photo = open(PHOTO, 'rb').read()
    broken = {
        'bad/empty.jpg': (b'', 'empty-file'),
        'bad/truncated.jpg': (photo[:len(photo) // 2], 'truncated-image'),
        'bad/text.jpg': (b'just some text\n', 'not-image'),
        'bad/garbage.png': (corrupt_png_bytes(),
                            'undecodable: broken data stream when reading '
                            'image file'),
    }
    (root / 'bad').mkdir()
    for relative, (content, _) in broken.items():
        (root / relative).write_bytes(content)
    assert Image.open(str(root / 'good/cmyk.jpg')).mode == 'CMYK'
    assert Image.open(str(root / 'good/palette.png')).mode == 'P'
    entries = [(relative, k) for k, relative in
               enumerate(sorted(list(good) + list(broken)))]
    expected_problems = {relative: reason
                         for relative, (_, reason) in broken.items()}
    return str(root), entries, expected_problems


@pytest.mark.parametrize('jobs', [1, 2])
def test_verify_images_drops_broken_files_with_reasons(mixed_folder, jobs):
    root, entries, expected_problems = mixed_folder
    good, problems = data.verify_images(root, entries, jobs=jobs)

    assert dict(problems) == expected_problems
    assert good == [e for e in entries if e[0] not in expected_problems]
    assert len(good) == 5


def test_verify_images_reports_missing_file(tmp_path):
    write_image(str(tmp_path / 'a.jpg'))
    good, problems = data.verify_images(
        str(tmp_path), [('a.jpg', 0), ('gone.jpg', 1)])
    assert good == [('a.jpg', 0)]
    assert problems == [('gone.jpg', 'missing-file')]


def test_problem_report_is_csv_with_header(tmp_path):
    path = str(tmp_path / 'problems.csv')
    problems = [('a/with,comma.jpg', 'not-image'),
                ('b.png', 'undecodable: broken "stream"')]
    data.write_problem_report(path, problems)
    with open(path, newline='') as f:
        rows = list(csv.reader(f))
    assert rows == [['path', 'reason']] + [list(p) for p in problems]


# --- mean -------------------------------------------------------------------

def pil_mean(root, entries, size):
    """The mean image computed straight from PIL and NumPy: every image as
    RGB, bilinearly resized to ``size`` (H, W), as BGR (C, H, W) float64."""
    total = np.zeros((3,) + tuple(size))
    for path, _ in entries:
        with Image.open(os.path.join(root, path)) as img:
            rgb = img.convert('RGB').resize(size[::-1], Image.BILINEAR)
        total += np.asarray(rgb, np.float64)[:, :, ::-1].transpose(2, 0, 1)
    return total / len(entries)

def test_streaming_mean_equals_numpy_mean(tmp_path):
    root = str(tmp_path)
    entries = make_folder(root, {'a': 3, 'b': 2}, size=(50, 40))
    shutil.copy(PHOTO, os.path.join(root, 'b', 'photo.jpg'))
    write_image(os.path.join(root, 'a', 'gray.png'), 9, mode='L')
    entries += [('b/photo.jpg', 1), ('a/gray.png', 0)]

    mean = data.compute_mean_image(root, entries, (64, 48))

    assert mean.dtype == np.float32
    assert mean.shape == (3, 64, 48)
    # fish-bike.jpg is decoded at a reduced scale (PIL's draft mode), so
    # its resized pixels differ a little from a full decode's
    difference = np.abs(mean - pil_mean(root, entries, (64, 48)))
    assert difference.mean() < 0.5 and difference.max() < 8, (
        difference.mean(), difference.max())
    without_photo = [e for e in entries if e[0] != 'b/photo.jpg']
    np.testing.assert_allclose(
        data.compute_mean_image(root, without_photo, (64, 48)),
        pil_mean(root, without_photo, (64, 48)), atol=1e-3)


def test_gray_mean_has_one_channel(tmp_path):
    entries = make_folder(str(tmp_path), {'a': 2, 'b': 1})
    mean = data.compute_mean_image(str(tmp_path), entries, (16, 16),
                                   channels=1)
    assert mean.shape == (1, 16, 16)


def test_save_mean_writes_npy_and_viewable_png(tmp_path):
    mean = np.zeros((3, 256, 256), np.float32)
    mean[0] = 200.0  # blue in BGR
    mean[2, :128] = 50.0
    npy_path, png_path = data.save_mean(mean, str(tmp_path / 'out'))

    np.testing.assert_array_equal(np.load(npy_path), mean)
    np.testing.assert_array_equal(data.load_mean(npy_path), mean)
    with Image.open(png_path) as png:
        assert png.format == 'PNG'
        assert png.size == (256, 256)
        assert png.convert('RGB').getpixel((0, 0)) == (50, 0, 200)
        assert png.convert('RGB').getpixel((0, 200)) == (0, 0, 200)
    assert sorted(os.listdir(str(tmp_path / 'out'))) == ['mean.npy',
                                                         'mean.png']


# --- prepare_dataset --------------------------------------------------------

def test_prepare_dataset_end_to_end(tmp_path, capsys):
    root = str(tmp_path / 'images')
    out = str(tmp_path / 'prepared')
    make_folder(root, {'cat': 5, 'dog': 5, 'fish': 5})
    photo = open(PHOTO, 'rb').read()
    with open(os.path.join(root, 'dog', 'broken.jpg'), 'wb') as f:
        f.write(photo[:len(photo) // 3])

    result = data.prepare_dataset(root, out, val_split=0.2, seed=3,
                                  size=(32, 32))

    assert result.class_names == ['cat', 'dog', 'fish']
    assert result.problems == [('dog/broken.jpg', 'truncated-image')]
    assert len(result.val) == 3
    assert sorted({label for _, label in result.val}) == [0, 1, 2]
    assert len(result.train) == 12
    listed = [p for p, _ in result.train + result.val]
    assert 'dog/broken.jpg' not in listed
    assert len(set(listed)) == 15

    assert sorted(os.listdir(out)) == ['labels.txt', 'mean.npy', 'mean.png',
                                       'problems.csv', 'train.txt',
                                       'val.txt']
    train, class_names = data.read_image_list(
        os.path.join(out, 'train.txt'), root)
    val, _ = data.read_image_list(os.path.join(out, 'val.txt'), root)
    assert (train, val, class_names) == (result.train, result.val,
                                         result.class_names)
    with open(os.path.join(out, 'problems.csv'), newline='') as f:
        assert list(csv.reader(f)) == [['path', 'reason'],
                                       ['dog/broken.jpg', 'truncated-image']]
    expected_mean = pil_mean(root, result.train, (32, 32))
    np.testing.assert_allclose(result.mean, expected_mean, atol=1e-3)
    np.testing.assert_array_equal(np.load(os.path.join(out, 'mean.npy')),
                                  result.mean)

    summary = capsys.readouterr().err.strip().splitlines()
    assert len(summary) == 1
    assert 'skipped 1 ' in summary[0]
    assert os.path.join(out, 'problems.csv') in summary[0]


def test_prepare_dataset_from_label_file_without_mean(tmp_path):
    root = str(tmp_path / 'images')
    entries = make_folder(root, {'x': 4, 'y': 4})
    label_path = str(tmp_path / 'my_list.txt')
    data.write_image_list(label_path, entries)
    out = str(tmp_path / 'out')

    result = data.prepare_dataset(root, out, val_split=0.0,
                                  image_list=label_path, compute_mean=False)

    assert result.mean is None
    assert result.problems == []
    assert result.train == sorted(entries)
    assert result.val == []
    assert result.class_names == ['0', '1']
    assert not os.path.exists(os.path.join(out, 'mean.npy'))
    with open(os.path.join(out, 'problems.csv')) as f:
        assert f.read().splitlines() == ['path,reason']


def test_prepare_dataset_with_no_readable_image_fails(tmp_path):
    root = tmp_path / 'images'
    for name in ('a', 'b'):
        (root / name).mkdir(parents=True)
        (root / name / 'x.jpg').write_bytes(b'')
    with pytest.raises(DataError, match='none of the 2 images'):
        data.prepare_dataset(str(root), str(tmp_path / 'out'))
    assert os.path.exists(str(tmp_path / 'out' / 'problems.csv'))


# --- LabeledImageDataset ----------------------------------------------------


def test_hidden_and_non_image_files_are_listed_as_problems(tmp_path):
    """Files the scan does not read are in problems.csv with their reason
    (as the README says); a symlinked class folder is followed."""
    root = tmp_path / 'images'
    make_folder(str(root), {'cat': 3, 'dog': 3})
    (root / 'cat' / '.DS_Store').write_bytes(b'x')
    (root / 'dog' / 'notes.txt').write_text('a note')
    (root / 'dog' / '.thumbs').mkdir()
    elsewhere = tmp_path / 'elsewhere' / 'bird'
    make_folder(str(tmp_path / 'elsewhere'), {'bird': 2})
    os.symlink(elsewhere, root / 'bird')
    result = data.prepare_dataset(str(root), str(tmp_path / 'out'),
                                  val_split=0, compute_mean=False)
    assert result.class_names == ['bird', 'cat', 'dog']
    assert len(result.train) == 8
    assert sorted(result.problems) == [
        ('cat/.DS_Store', 'hidden-file'), ('dog/.thumbs', 'hidden-file'),
        ('dog/notes.txt', 'not-an-image-extension')]
