"""Folder scans a careless user or an attacker can break: links that loop
or point at the data folder, FIFOs, names that cannot be a line of
train.txt, classes of unreadable images, outputs inside the data folder."""
import csv
import os
import subprocess
import sys
import tempfile

import pytest
from hypothesis import given, settings, strategies as st

from finetune.common.errors import DataError
from finetune.data import folder as data
from finetune.data import images
from tests.support.photos import write_image


def two_classes(root):
    """root/a/1.jpg, root/b/2.jpg; returns root as str."""
    write_image(os.path.join(str(root), 'a', '1.jpg'), seed=1)
    write_image(os.path.join(str(root), 'b', '2.jpg'), seed=2)
    return str(root)


def read_problems(out):
    with open(os.path.join(str(out), data.PROBLEMS_FILE), newline='',
              encoding='utf-8') as f:
        return list(csv.reader(f))[1:]


@pytest.mark.parametrize('target', ['.', '..', 'b'])
def test_a_class_linked_to_the_data_folder_a_parent_or_a_class_is_no_class(
        tmp_path, target, caplog):
    root = two_classes(tmp_path / 'data')
    os.symlink(target, os.path.join(root, 'c'))
    entries, names = data.scan_image_folder(root)
    assert names == ['a', 'b']
    assert entries == [('a/1.jpg', 0), ('b/2.jpg', 1)]
    assert any('not used as a class' in r.getMessage() and
               os.path.join(root, 'c') in r.getMessage()
               for r in caplog.records)


def test_links_in_a_class_to_itself_a_parent_or_a_class_are_not_walked(
        tmp_path):
    root = two_classes(tmp_path / 'data')
    os.symlink('.', os.path.join(root, 'a', 'loop'))
    os.symlink('../..', os.path.join(root, 'a', 'up'))
    os.symlink('../b', os.path.join(root, 'a', 'to_b'))
    os.makedirs(os.path.join(root, 'a', 'real'))
    write_image(os.path.join(root, 'a', 'real', '3.jpg'), seed=3)
    os.symlink('real', os.path.join(root, 'a', 'twice'))
    entries, names = data.scan_image_folder(root)
    assert entries == [('a/1.jpg', 0), ('a/real/3.jpg', 0), ('b/2.jpg', 1)]
    unlisted = dict(data.unlisted_files(root, names))
    for link in ('a/loop', 'a/up', 'a/to_b', 'a/twice'):
        assert unlisted[link] == images.LINKED_FOLDER, link


def test_a_fifo_in_a_class_is_listed_and_never_opened(tmp_path):
    root = two_classes(tmp_path / 'data')
    os.mkfifo(os.path.join(root, 'a', 'pipe.jpg'))
    entries, names = data.scan_image_folder(root)
    assert entries == [('a/1.jpg', 0), ('b/2.jpg', 1)]
    assert dict(data.unlisted_files(root, names))['a/pipe.jpg'] == \
        images.NOT_REGULAR
    out = tmp_path / 'out'
    prepared = data.prepare_dataset(root, str(out), val_split=0,
                                    compute_mean=False)
    assert prepared.train == entries
    assert ['a/pipe.jpg', images.NOT_REGULAR] in read_problems(out)


def test_a_fifo_given_by_path_is_refused_without_blocking(tmp_path):
    # in a subprocess: before the fix, opening the FIFO blocked forever
    fifo = str(tmp_path / 'pipe.jpg')
    os.mkfifo(fifo)
    code = ('import sys\n'
            'from finetune.common.errors import DataError\n'
            'from finetune.data.transforms import check_image\n'
            'from finetune.data.transforms import CaffePreprocess\n'
            'print(check_image(sys.argv[1]))\n'
            'try:\n'
            '    CaffePreprocess()(sys.argv[1])\n'
            'except DataError as e:\n'
            '    print(e)\n')
    result = subprocess.run([sys.executable, '-c', code, fifo],
                            capture_output=True, text=True, timeout=60)
    assert result.stdout.splitlines() == [
        images.NOT_REGULAR, '%s: %s' % (fifo, images.NOT_REGULAR)], \
        result.stderr


def test_a_label_file_listing_a_fifo_or_a_device_skips_it(tmp_path):
    root = two_classes(tmp_path / 'data')
    os.mkfifo(os.path.join(root, 'a', 'pipe.jpg'))
    listing = tmp_path / 'list.txt'
    listing.write_text('a/1.jpg 0\na/pipe.jpg 0\n/dev/zero 1\nb/2.jpg 1\n')
    out = tmp_path / 'out'
    prepared = data.prepare_dataset(root, str(out), val_split=0,
                                    image_list=str(listing),
                                    compute_mean=False)
    assert prepared.train == [('a/1.jpg', 0), ('b/2.jpg', 1)]
    assert read_problems(out) == [['a/pipe.jpg', images.NOT_REGULAR],
                                  ['/dev/zero', images.NOT_REGULAR]]


def test_undecodable_file_names_go_to_problems_csv_escaped(tmp_path):
    root = two_classes(tmp_path / 'data')
    bad = os.path.join(os.fsencode(root), b'a', b'bad\xff.jpg')
    with open(bad, 'wb') as f, open(os.path.join(root, 'a', '1.jpg'),
                                    'rb') as good:
        f.write(good.read())
    out = tmp_path / 'out'
    prepared = data.prepare_dataset(root, str(out), val_split=0,
                                    compute_mean=False)
    assert prepared.train == [('a/1.jpg', 0), ('b/2.jpg', 1)]
    assert ['a/bad\\xff.jpg', images.BAD_NAME] in read_problems(out)


@pytest.mark.parametrize('separator', ['\n', '\r', '\x0b', '\x0c', '\x1c',
                                       '\x1d', '\x1e', '\x85', '\u2028',
                                       '\u2029'])
def test_file_names_with_line_separators_are_left_out_and_lists_read_back(
        tmp_path, separator):
    root = two_classes(tmp_path / 'data')
    write_image(os.path.join(root, 'a', 'x%sy.jpg' % separator), seed=4)
    out = tmp_path / 'out'
    prepared = data.prepare_dataset(root, str(out), val_split=0,
                                    compute_mean=False)
    assert prepared.train == [('a/1.jpg', 0), ('b/2.jpg', 1)]
    # what --resume reads back is what was written
    assert data.read_image_list(str(out / data.TRAIN_FILE), root) == (
        prepared.train, ['a', 'b'])


@pytest.mark.parametrize('name', ['c\u2028d', 'c\nd', 'c\x85d',
                                  b'c\xffd', ' c', 'c ', 'c\t'])
def test_class_folder_names_that_cannot_be_a_line_are_refused_up_front(
        tmp_path, name):
    root = two_classes(tmp_path / 'data')
    if isinstance(name, bytes):
        path = os.path.join(os.fsencode(root), name)
        os.makedirs(path)
        write_image(os.fsdecode(os.path.join(path, b'1.jpg')))
    else:
        write_image(os.path.join(root, name, '1.jpg'))
    with pytest.raises(DataError, match='class folder name') as error:
        data.scan_image_folder(root)
    message = str(error.value)
    assert len(message.splitlines()) == 1
    message.encode('utf-8')  # printable, no surrogates


def test_class_names_file_with_a_line_separator_is_refused(tmp_path):
    path = tmp_path / 'labels.txt'
    path.write_text('cat\ndo\u2028g\n', encoding='utf-8')
    with pytest.raises(DataError, match=r'labels.txt:2: class name'):
        data.read_class_names(str(path))
    path.write_text('cat\r\ndog\r\n', encoding='utf-8')
    assert data.read_class_names(str(path)) == ['cat', 'dog']


def test_a_class_of_only_unreadable_images_is_left_out(tmp_path, caplog):
    root = two_classes(tmp_path / 'data')
    os.makedirs(os.path.join(root, 'broken'))
    for name in ('x.jpg', 'y.png'):
        with open(os.path.join(root, 'broken', name), 'wb') as f:
            f.write(b'not an image at all')
    write_image(os.path.join(root, 'c', '3.jpg'), seed=3)
    out = tmp_path / 'out'
    prepared = data.prepare_dataset(root, str(out), val_split=0,
                                    compute_mean=False)
    assert prepared.class_names == ['a', 'b', 'c']
    assert prepared.train == [('a/1.jpg', 0), ('b/2.jpg', 1), ('c/3.jpg', 2)]
    assert data.read_class_names(str(out / data.CLASS_NAMES_FILE)) == [
        'a', 'b', 'c']
    assert {row[0] for row in read_problems(out)} == {'broken/x.jpg',
                                                      'broken/y.png'}
    assert any('broken: no readable images' in r.getMessage()
               for r in caplog.records)


def test_a_label_file_class_of_only_unreadable_images_is_said(tmp_path,
                                                              caplog):
    root = two_classes(tmp_path / 'data')
    (tmp_path / 'data' / 'a' / 'x.jpg').write_bytes(b'junk')
    listing = tmp_path / 'list.txt'
    listing.write_text('a/1.jpg 0\nb/2.jpg 1\na/x.jpg 2\n')
    prepared = data.prepare_dataset(root, str(tmp_path / 'out'),
                                    val_split=0, image_list=str(listing),
                                    compute_mean=False)
    assert prepared.class_names == ['0', '1', '2']  # the file's numbering
    assert any('class 2 (2) has no readable image' in r.getMessage()
               for r in caplog.records)


def test_only_one_readable_class_is_refused(tmp_path):
    root = str(tmp_path / 'data')
    write_image(os.path.join(root, 'a', '1.jpg'))
    os.makedirs(os.path.join(root, 'b'))
    (tmp_path / 'data' / 'b' / 'x.jpg').write_bytes(b'junk')
    with pytest.raises(DataError, match='found 1 class folder'):
        data.prepare_dataset(root, str(tmp_path / 'out'),
                             compute_mean=False)


@pytest.mark.parametrize('where', ['data', 'data/result', 'data/a/result',
                                   'link/result'])
def test_an_output_inside_the_data_folder_is_refused_before_writing(
        tmp_path, where):
    root = two_classes(tmp_path / 'data')
    os.symlink('data', str(tmp_path / 'link'))
    out = tmp_path / where
    before = sorted(os.walk(root))
    with pytest.raises(DataError, match='--out .*inside the data folder'):
        data.prepare_dataset(root, str(out), compute_mean=False)
    assert sorted(os.walk(root)) == before  # nothing written


def test_a_label_file_inside_the_output_folder_is_refused(tmp_path):
    root = two_classes(tmp_path / 'data')
    out = tmp_path / 'out'
    out.mkdir()
    (out / 'list.txt').write_text('a/1.jpg 0\nb/2.jpg 1\n')
    with pytest.raises(DataError, match='--image-list .*inside --out'):
        data.prepare_dataset(root, str(out), image_list=str(
            out / 'list.txt'), compute_mean=False)
    assert sorted(os.listdir(out)) == ['list.txt']
    # outside --out it is read
    os.rename(out / 'list.txt', tmp_path / 'list.txt')
    prepared = data.prepare_dataset(root, str(out), val_split=0,
                                    image_list=str(tmp_path / 'list.txt'),
                                    compute_mean=False)
    assert prepared.train == [('a/1.jpg', 0), ('b/2.jpg', 1)]


FOLDERS = ('', 'a', 'b', 'a/sub', 'b/sub')  # relative to the data folder
TARGETS = FOLDERS + ('..',)


@settings(derandomize=True, max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(FOLDERS),
                          st.sampled_from(TARGETS)), max_size=6))
def test_any_links_give_each_real_image_once_under_a_class_holding_it(links):
    with tempfile.TemporaryDirectory() as tmp:
        root = os.path.join(tmp, 'data')
        for number, folder in enumerate(FOLDERS[1:]):
            os.makedirs(os.path.join(root, folder), exist_ok=True)
            with open(os.path.join(root, folder, '%d.jpg' % number),
                      'wb') as f:
                f.write(b'x')
        for number, (where, target) in enumerate(links):
            folder = os.path.join(root, where)
            os.symlink(os.path.relpath(os.path.join(root, target), folder),
                       os.path.join(folder, 'link%d' % number))
        entries, names = data.scan_image_folder(root)
        reals = [os.path.realpath(os.path.join(root, p)) for p, _ in entries]
        assert len(set(reals)) == len(reals)  # no image twice
        assert len(reals) == 4  # none lost
        for real, (_, label) in zip(reals, entries):
            holder = os.path.realpath(os.path.join(root, names[label]))
            assert real.startswith(holder + os.sep)
