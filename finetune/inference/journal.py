"""The resumable output of a batch job: rows made durable chunk by chunk.

``predict -o preds.csv`` appends its rows to ``.preds.csv.partial`` beside
the CSV, one chunk at a time, each flushed and fsynced; the final CSV is
written from it atomically at the end and the journal removed. A run killed
at any point (SIGKILL included) leaves the journal: the same command again
keeps its complete chunks (a chunk cut by the kill is dropped) and labels
only the rest, so the final CSV is byte-identical to an uninterrupted run's.

Format: one line ``finetune-predict-journal 1 <JSON identity>``, then per
chunk a line ``chunk <rows> <bytes> <crc32 hex>`` and its ``<bytes>`` of
CSV text (the rows exactly as they appear in the final CSV). The identity
names what the rows depend on (the model file, the ordered input list, the
options); a journal of another identity is refused, naming what differs.
The journal is locked (``fcntl.flock``) while a run appends to it.
"""
import contextlib
import csv
import fcntl
import glob
import io
import json
import os
import zlib

from finetune.common.errors import FinetuneError
from finetune.common.fileio import csv_row
from finetune.common.fileio import naming_write_errors
from finetune.common.fileio import printable
from finetune.common.fileio import read_csv_cell

MAGIC = b'finetune-predict-journal 1 '

#: The longest identity line read (the identity holds hashes and a few
#: options; a longer first line is not a journal).
MAX_IDENTITY_BYTES = 1 << 16


def journal_path(out):
    """The journal of the output file ``out``: ``.<name>.partial``
    beside it (spelt as ``out`` is, so errors name what the user gave)."""
    directory, name = os.path.split(out)
    return os.path.join(directory, '.%s.partial' % name)


def csv_text(rows):
    """``rows`` (lists of cells) as the CSV text ``write_csv`` writes for
    them (cells through ``csv_row``)."""
    buffer = io.StringIO(newline='')
    writer = csv.writer(buffer)
    for row in rows:
        writer.writerow(csv_row(row))
    return buffer.getvalue()


def remove_stale_temporaries(path):
    """Remove the temporaries ``fileio.atomic_write`` leaves beside
    ``path`` when a writer is killed (``.<name>.XXXX.tmp*``). Call only
    while holding the lock that every writer of ``path`` takes."""
    directory, name = os.path.split(path)
    for stale in glob.glob(os.path.join(glob.escape(directory),
                                        '.%s.*.tmp*' % glob.escape(name))):
        with contextlib.suppress(FileNotFoundError):
            os.remove(stale)


def _differences(stored, identity):
    return ['%s was %s, now %s' % (key, stored.get(key), identity[key])
            for key in identity if stored.get(key) != identity[key]]


class Journal:
    """The journal of one output file, opened and locked.

    Attributes:
        path (str): the journal file.
        rows (int): complete rows it holds.
        skipped (int): of those, rows whose ``error`` cell is not empty.
        resumed (bool): whether it held rows of an earlier run.

    Args:
        out (str): the final output file (named in messages).
        identity (dict): what the rows depend on (JSON-serializable).
        paths (list of str): the input list, in order (rows are checked
            against it).
        require (bool): refuse when there is no journal to resume
            (``--resume``).

    Raises:
        FinetuneError: another process holds the journal; it is of another
            identity (naming what differs) or its rows do not match
            ``paths``; ``require`` and nothing to resume.
    """

    def __init__(self, out, identity, paths, require=False):
        self.out = out
        self.path = journal_path(out)
        self.identity = identity
        exists = os.path.exists(self.path)
        if require and not exists:
            raise FinetuneError('--resume: %s has no partial run to resume '
                                '(no %s)' % (out, self.path))
        with naming_write_errors(out, temporary=self.path):
            os.makedirs(os.path.dirname(self.path) or '.', exist_ok=True)
            self.file = open(self.path, 'a+b')
        try:
            self._lock()
            self.rows, self.skipped, end = self._read(paths)
            self.resumed = self.rows > 0
            self.file.truncate(end)  # a chunk cut by a kill
            if end == 0:
                self._append(MAGIC + json.dumps(
                    identity, sort_keys=True).encode() + b'\n')
        except BaseException:
            self.file.close()
            raise

    def _lock(self):
        try:
            fcntl.flock(self.file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise FinetuneError('%s: another run is writing it (%s is '
                                'locked); wait for it' % (
                                    self.out, self.path)) from None

    def _read(self, paths):
        """(rows, skipped, end offset of the last complete chunk)."""
        self.file.seek(0)
        first = self.file.readline(MAX_IDENTITY_BYTES)
        if not first or (not first.endswith(b'\n') and (
                first.startswith(MAGIC) or MAGIC.startswith(first))):
            return 0, 0, 0  # empty, or killed while writing this line
        if not first.startswith(MAGIC) or not first.endswith(b'\n'):
            raise FinetuneError('%s: not a finetune predict journal; '
                                'delete it to start %s over'
                                % (self.path, self.out))
        try:
            stored = json.loads(first[len(MAGIC):])
        except ValueError:
            stored = {}
        differs = _differences(stored if isinstance(stored, dict) else {},
                               self.identity)
        if differs:
            raise FinetuneError(
                '%s: the partial run at %s is of another job (%s); run it '
                'as it was, or delete %s to start over' % (
                    self.out, self.path, '; '.join(differs), self.path))
        rows = skipped = 0
        end = self.file.tell()
        while True:
            chunk = self._next_chunk()
            if chunk is None:
                return rows, skipped, end
            cells = list(csv.reader(io.StringIO(chunk, newline='')))
            expected = [printable(p) for p in paths[rows:rows + len(cells)]]
            if [read_csv_cell(row[0]) for row in cells] != expected:
                raise FinetuneError(
                    '%s: the rows of %s after row %d are of other images; '
                    'delete it to start over' % (self.out, self.path, rows))
            rows += len(cells)
            skipped += sum(1 for row in cells if row[-1])
            end = self.file.tell()

    def _next_chunk(self):
        """The next complete chunk's text, or None (end, or a cut chunk)."""
        line = self.file.readline(200)
        fields = line.split()
        if not line.endswith(b'\n') or len(fields) != 4 or \
                fields[0] != b'chunk' or not fields[2].isdigit():
            return None
        body = self.file.read(int(fields[2]))
        if len(body) != int(fields[2]) or \
                b'%08x' % zlib.crc32(body) != fields[3]:
            return None
        text = body.decode('utf-8')
        if len(list(csv.reader(io.StringIO(text, newline='')))) != \
                int(fields[1]):
            return None
        return text

    def _append(self, data):
        with naming_write_errors(self.out, temporary=self.path):
            self.file.seek(0, os.SEEK_END)
            self.file.write(data)
            self.file.flush()
            os.fsync(self.file.fileno())

    def restart(self):
        """Drop every row: the job starts over."""
        self.file.seek(0)
        self.file.readline(MAX_IDENTITY_BYTES)
        self.file.truncate(self.file.tell())
        self.rows = self.skipped = 0
        self.resumed = False

    def append(self, rows):
        """Make ``rows`` (lists of cells, the next ones in order) durable."""
        body = csv_text(rows).encode('utf-8')
        self._append(b'chunk %d %d %08x\n' % (len(rows), len(body),
                                              zlib.crc32(body)) + body)
        self.rows += len(rows)
        self.skipped += sum(1 for row in rows if row[-1])

    def chunks(self):
        """The CSV text of every chunk, in order (bytes)."""
        self.file.seek(0)
        self.file.readline(MAX_IDENTITY_BYTES)
        while True:
            line = self.file.readline(200)
            if not line:
                return
            yield self.file.read(int(line.split()[2]))

    def close(self, remove=False):
        """Unlock (and with ``remove``, delete) the journal."""
        if remove:
            with contextlib.suppress(FileNotFoundError):
                os.remove(self.path)
        self.file.close()
