"""Atomic file writing: readers never see a half-written file."""
import contextlib
import csv
import hashlib
import fcntl
import mmap
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


def sha1_of_file(path):
    """Hex SHA-1 of the file at ``path``, read in 1 MiB chunks."""
    digest = hashlib.sha1()
    with open(path, 'rb') as file:
        for chunk in iter(lambda: file.read(1 << 20), b''):
            digest.update(chunk)
    return digest.hexdigest()


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

    The temporary file is locked (``flock``) while it is written, so a
    cleaner can tell it from one a killed process left (see
    :func:`finetune.weights.conversion.remove_stale_temporaries`). Members
    are written one at a time; an array that is a view of a
    read-only memory map (a caffemodel as
    :func:`finetune.caffe.read_caffemodel` maps it, ``numpy.memmap`` in
    mode ``'r'``) has its pages released once written (see
    :func:`release_pages`), so a file streamed from a memory-mapped source
    holds no more of it in memory than its largest member.
    """
    with atomic_write(path, suffix='.npz') as tmp, open(tmp, 'wb') as file:
        fcntl.flock(file.fileno(), fcntl.LOCK_EX)  # "being written"
        archive = zipfile.ZipFile(file, 'w', zipfile.ZIP_STORED,
                                  allowZip64=True)
        try:
            for name, value in arrays.items():
                with archive.open(name + '.npy', 'w',
                                  force_zip64=True) as member:
                    npy_format.write_array(member, np.asanyarray(value))
                release_pages(value)
        except BaseException:
            with contextlib.suppress(OSError, ValueError):
                archive.close()  # the file is removed; only release it
            raise
        archive.close()


def _read_only_map(array):
    """The read-only ``mmap.mmap`` that ``array`` is a view of, or None."""
    base = array
    while isinstance(base, np.ndarray) and base.base is not None:
        base = base.base
    if isinstance(base, memoryview):
        base = base.obj
    if not isinstance(base, mmap.mmap) or base.closed:
        return None
    with memoryview(base) as view:
        return base if view.readonly else None


def release_pages(array):
    """Drop the memory pages of ``array`` from this process when it is a
    C-contiguous view of a read-only memory map; otherwise do nothing.

    The pages are clean copies of the file (still in the page cache) and
    come back on the next read, so the array stays valid; what goes is
    their share of the process's resident memory, which reading a large
    memory-mapped file from start to end otherwise grows by the whole file.
    """
    if not isinstance(array, np.ndarray) or not array.flags.c_contiguous \
            or array.nbytes == 0:
        return
    source = _read_only_map(array)
    if source is None:
        return
    start = (array.__array_interface__['data'][0]
             - np.frombuffer(source, np.uint8).__array_interface__['data'][0])
    first = start // mmap.PAGESIZE * mmap.PAGESIZE
    stop = min(len(source), -(-(start + array.nbytes) // mmap.PAGESIZE)
               * mmap.PAGESIZE)
    source.madvise(mmap.MADV_DONTNEED, first, stop - first)


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
