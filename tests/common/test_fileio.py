"""Atomic writes: the npz writer and file names in full-disk errors."""
import errno
import gc
import os
import sys

import numpy as np
import pytest

from finetune.common import fileio
from finetune.common.fileio import atomic_write
from finetune.common.fileio import naming_write_errors
from finetune.common.fileio import write_csv
from finetune.common.fileio import write_npz


def test_write_npz_reads_back_like_numpy_savez(tmp_path):
    arrays = {'a/W': np.arange(6, dtype=np.float32).reshape(2, 3),
              'n': np.asarray(None), 'i': np.int64(7)}
    write_npz(str(tmp_path / 'x.npz'), arrays)
    np.savez(str(tmp_path / 'y.npz'), **arrays)
    assert sorted(os.listdir(tmp_path)) == ['x.npz', 'y.npz']
    with np.load(str(tmp_path / 'x.npz'), allow_pickle=True) as x, \
            np.load(str(tmp_path / 'y.npz'), allow_pickle=True) as y:
        assert x.files == y.files
        for name in x.files:
            assert x[name].dtype == y[name].dtype
            assert np.array_equal(x[name], y[name])
        assert x['n'].item() is None


class FullDisk:
    """A file object that fails like a full disk after ``room`` bytes."""

    def __init__(self, file, room):
        self.file, self.room = file, room

    def write(self, data):
        self.room -= len(data)
        if self.room < 0:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return self.file.write(data)

    def __getattr__(self, name):
        return getattr(self.file, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.file.close()


def test_a_full_disk_names_the_file_and_leaves_no_open_archive(
        tmp_path, monkeypatch):
    real_open = open
    monkeypatch.setattr(fileio, 'open', lambda path, mode='r': FullDisk(
        real_open(path, mode), 1000) if 'w' in mode else real_open(
        path, mode), raising=False)
    unraisable = []
    monkeypatch.setattr(sys, 'unraisablehook', unraisable.append)
    path = str(tmp_path / 'model.npz')
    with pytest.raises(OSError) as raised:
        write_npz(path, {'w': np.zeros(10000, np.float32)})
    assert raised.value.errno == errno.ENOSPC
    assert raised.value.filename == path
    raised = None
    gc.collect()  # numpy.savez's archive would complain here
    assert unraisable == []
    assert os.listdir(tmp_path) == []  # no temporary file either


def test_only_anonymous_plain_write_errors_get_a_file_name(tmp_path):
    path = str(tmp_path / 'f')
    for error, named in [
            (OSError(errno.EFBIG, 'File too large'), path),
            (OSError(errno.EACCES, 'Permission denied', 'other'), 'other'),
            (ConnectionResetError(errno.ECONNRESET, 'reset'), None),
            (OSError('no errno'), None)]:
        with pytest.raises(OSError) as raised:
            with naming_write_errors(path):
                raise error
        assert type(raised.value) is type(error)
        assert raised.value.filename == named


def test_atomic_write_names_the_destination_of_a_failed_write(tmp_path):
    path = str(tmp_path / 'report.csv')
    with pytest.raises(OSError) as raised:
        with atomic_write(path) as tmp:
            with open(tmp, 'w') as f:
                f.write('x')
            raise OSError(errno.ENOSPC, 'No space left on device')
    assert str(raised.value) == (
        "[Errno 28] No space left on device: '%s'" % path)
    assert os.listdir(tmp_path) == []


def test_a_read_only_folder_names_the_file_not_the_temporary(
        tmp_path, monkeypatch):
    def read_only(prefix, suffix, dir):
        name = os.path.join(dir, prefix + 'x1y2z3' + suffix)
        raise OSError(errno.EROFS, 'Read-only file system', name)
    monkeypatch.setattr(fileio.tempfile, 'mkstemp', read_only)
    path = str(tmp_path / 'p.csv')
    with pytest.raises(OSError) as raised:
        write_csv(path, ['a'], [[1]])
    assert str(raised.value) == "[Errno 30] Read-only file system: '%s'" % (
        path)


def test_an_immutable_destination_names_the_file_not_the_temporary(
        tmp_path, monkeypatch):
    def immutable(source, target):
        raise PermissionError(errno.EPERM, 'Operation not permitted', source,
                              target)
    monkeypatch.setattr(fileio.os, 'replace', immutable)
    path = str(tmp_path / 'model.npz')
    with pytest.raises(PermissionError) as raised:
        write_npz(path, {'w': np.zeros(3)})
    assert str(raised.value) == "[Errno 1] Operation not permitted: '%s'" % (
        path)
    assert os.listdir(tmp_path) == []


FORMULAS = ['=HYPERLINK("http://x","y")', '+1', '-2+3', '@SUM(A1)',
            '\tq', '\r=x', "'=quoted", "'plain"]


def test_formula_cells_are_escaped_and_read_back_unchanged(tmp_path):
    import csv
    path = str(tmp_path / 'x.csv')
    values = FORMULAS + ['a=b', 'fine', '']
    write_csv(path, ['name', 'n'], [[value, 3] for value in values])
    with open(path, newline='', encoding='utf-8') as f:
        rows = list(csv.reader(f))[1:]
    # OWASP: no cell a spreadsheet reads starts with a formula character
    assert all(not row[0].startswith(fileio.FORMULA_STARTS) for row in rows)
    assert [row[0] for row in rows[:6]] == ["'" + v for v in FORMULAS[:6]]
    assert [row[1] for row in rows] == ['3'] * len(values)  # numbers as is
    assert [fileio.read_csv_cell(row[0]) for row in rows] == values


def test_undecodable_file_names_are_written_escaped(tmp_path):
    import csv
    name = os.fsdecode(b'bad\xff.png')
    path = str(tmp_path / 'x.csv')
    write_csv(path, ['path'], [[name]])
    with open(path, newline='', encoding='utf-8') as f:
        assert list(csv.reader(f))[1] == ['bad\\xff.png']
