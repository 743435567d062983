"""Atomic file writing: readers never see a half-written file."""
import contextlib
import csv
import os
import tempfile
import zipfile

import numpy as np
from numpy.lib import format as npy_format


@contextlib.contextmanager
def atomic_write(path, suffix=''):
    """Yield a temporary path beside ``path``; rename it onto ``path`` on success.

    The temporary file lives in the same directory, so the final
    ``os.replace`` is atomic on POSIX: a process killed mid-write leaves the
    old ``path`` (or none) and a stray ``.tmp`` file, never a truncated
    ``path``. On an exception the temporary file is removed. ``suffix`` is
    appended to the temporary name for writers that insist on an extension
    (``numpy.savez`` adds ``.npz`` to names without it). Errors name
    ``path``, never the temporary file: a read-only folder, an immutable
    ``path``, a full disk (see :func:`naming_write_errors`).

    Args:
        path (str): final destination.
        suffix (str): extension the temporary name must end with.
    """
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    try:
        fd, tmp = tempfile.mkstemp(
            prefix='.' + os.path.basename(path) + '.',
            suffix='.tmp' + suffix, dir=directory)
    except OSError as e:  # a read-only folder: name the file, not tmp
        raise OSError(e.errno, e.strerror, path) from None
    os.close(fd)
    try:
        with naming_write_errors(path, temporary=tmp):
            yield tmp
            with open(tmp, 'rb') as f:
                os.fsync(f.fileno())
            os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600 files
            os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
        raise


@contextlib.contextmanager
def naming_write_errors(path, temporary=None):
    """Re-raise, naming ``path``, an ``OSError`` that names no file, as
    ``write()`` raises on a full disk (``ENOSPC``, ``EFBIG``, ``EDQUOT``),
    or that names the internal ``temporary`` file (an immutable ``path``
    refuses the rename onto it), so the one-line error says which file;
    other errors (socket or SSL errors, other files) pass unchanged."""
    try:
        yield
    except OSError as error:
        anonymous = type(error) is OSError and error.filename is None
        internal = temporary is not None and error.filename == temporary
        if error.errno is None or not (anonymous or internal):
            raise
        raise OSError(error.errno, error.strerror, path) from None


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


# Cells a spreadsheet would run as a formula (OWASP's "CSV injection"):
# those starting with one of these characters get a leading apostrophe.
FORMULA_STARTS = ('=', '+', '-', '@', '\t', '\r')


def csv_cell(value):
    """``value`` as a CSV cell a spreadsheet shows and never evaluates.

    Text starting with ``= + - @``, a tab or a carriage return is prefixed
    with ``'`` as OWASP recommends, and so is text already starting with
    ``'``, so that :func:`read_csv_cell` gives every text back unchanged.
    Text holding characters that cannot be UTF-8 (a file name of undecodable
    bytes, as ``os.fsdecode`` returns it) has them written as ``\\xNN``
    escapes (see :func:`printable`). Numbers and None pass unchanged.
    """
    if not isinstance(value, str):
        return value
    value = printable(value)
    if value.startswith(FORMULA_STARTS + ("'",)):
        return "'" + value
    return value


def read_csv_cell(text):
    """The text :func:`csv_cell` was given (a cell read back from a CSV)."""
    if text.startswith("'") and text[1:].startswith(FORMULA_STARTS + ("'",)):
        return text[1:]
    return text


def csv_row(row):
    """``row`` (an iterable of cells) with each cell made safe by
    :func:`csv_cell`: a list."""
    return [csv_cell(cell) for cell in row]


def printable(text):
    """``text`` with surrogate-escaped bytes (undecodable file names) as
    ``\\xNN``: the same text when it is valid Unicode, else a str that
    encodes to UTF-8 and shows which bytes were wrong."""
    try:
        text.encode('utf-8')
        return text
    except UnicodeEncodeError:
        return text.encode('utf-8', 'surrogateescape').decode(
            'utf-8', 'backslashreplace').encode(
            'utf-8', 'backslashreplace').decode('utf-8')


def write_csv(path, header, rows):
    """Write ``header`` and ``rows`` (any iterable, consumed once) as a
    UTF-8 CSV file, atomically (see :func:`atomic_write`); text cells go
    through :func:`csv_cell` (no formulas, any file name).

    Returns:
        int: the number of rows written.
    """
    count = 0
    with atomic_write(path, suffix='.csv') as tmp:
        with open(tmp, 'w', newline='', encoding='utf-8') as f:
            writer = csv.writer(f)
            writer.writerow(csv_row(header))
            for row in rows:
                writer.writerow(csv_row(row))
                count += 1
    return count


def write_npz(path, arrays):
    """Write ``arrays`` (name -> array) to ``path`` as an uncompressed .npz
    file, atomically (see :func:`atomic_write`).

    The same file ``numpy.savez`` writes, but when a write fails (a full
    disk) the half-written archive is closed before the error propagates:
    ``numpy.savez`` leaves it open in the traceback's frames, and the
    garbage collector's ``ZipFile.__del__`` then prints a second traceback
    ("Exception ignored in ...") after the one-line error.
    """
    with atomic_write(path, suffix='.npz') as tmp, open(tmp, 'wb') as file:
        archive = zipfile.ZipFile(file, 'w', zipfile.ZIP_STORED,
                                  allowZip64=True)
        try:
            for name, value in arrays.items():
                with archive.open(name + '.npy', 'w',
                                  force_zip64=True) as member:
                    npy_format.write_array(member, np.asanyarray(value))
        except BaseException:
            with contextlib.suppress(OSError, ValueError):
                archive.close()  # the file is removed; only release it
            raise
        archive.close()


def refuse_overwriting_inputs(output, inputs, option):
    """Raise if the file ``output`` is one of ``inputs`` (same file, also
    through links or another spelling).

    Raises:
        FinetuneError: naming ``option`` and the file.
    """
    from finetune.common.errors import FinetuneError
    if not os.path.exists(output):
        return
    for item in inputs:
        if os.path.exists(item) and os.path.samefile(output, item):
            raise FinetuneError('%s %s: that is an input of this command; '
                                'choose another output file'
                                % (option, output))
