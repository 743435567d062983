"""Images from a list of URLs, in the class-folder layout training reads.

The list is either ``url label`` lines or a CSV (gzipped or not) with a URL
and a label column. Each image that downloads, is an image, decodes fully, is
at least ``--min-size`` pixels on each side, is not a known placeholder and
is not a duplicate is saved as ``<out>/<label>/<sha1[:16]>.<ext>``; every
entry gets a row ``url,label,status,reason,path`` in the report (default
``<out>/gather_report.csv``, ``path`` relative to ``<out>``). Status is
``saved``, ``present`` (already on disk from an earlier run) or ``skipped``
with a reason. Images are written under a temporary name and renamed.
While a run goes, each row is also appended to the journal
``.<report name>.partial`` beside the report: a run that is killed (even
with SIGKILL) leaves its images and that journal, and re-running the same
command reads the report and the journal to skip what is already on disk
and valid, appends to the journal, and at the end writes the report (all
rows, atomically) and removes the journal; a successful run leaves no
journal.
Nothing is written outside ``--out`` (labels that are not plain folder names
are skipped as ``bad-label``) except the report when ``--report`` says so.
"""
import collections
import concurrent.futures
import csv
import dataclasses
import gzip
import hashlib
import io
import itertools
import os
import re
import unicodedata

from PIL import Image
from tqdm import tqdm

from finetune.common.fileio import sha1_of_file
from finetune.sources.http import TransferError, check_url, fetch_bytes
from finetune.common.cli import non_negative_float
from finetune.common.cli import non_negative_int
from finetune.common.cli import positive_float
from finetune.common.cli import positive_int
from finetune.common.cli import refusal
from finetune.common.errors import DataError
from finetune.data import images
from finetune.data.folder import read_class_names
from finetune.common.fileio import atomic_write
from finetune.common.fileio import csv_row
from finetune.common.fileio import read_csv_cell
from finetune.common.fileio import refuse_overwriting_inputs
from finetune.common.fileio import write_csv

Entry = collections.namedtuple('Entry', 'url label')
ReportRow = collections.namedtuple('ReportRow', 'url label status reason path')

REPORT_NAME = 'gather_report.csv'
URL_COLUMNS = ('image_url', 'url')
LABEL_COLUMN = 'label'
EXTENSIONS = {'JPEG': '.jpg', 'PNG': '.png', 'GIF': '.gif', 'BMP': '.bmp', 'WEBP': '.webp'}
HASH_CHARS = 16
DEFAULT_MAX_BYTES = 20 << 20
#: default per-image deadline, in multiples of --timeout
DEADLINE_TIMEOUTS = 3
# SHA-1s of known "photo unavailable" images. Empty on purpose: hosts change
# theirs; add one with --placeholder-image FILE or --placeholder-hashes FILE.
BUILTIN_PLACEHOLDER_SHA1S = frozenset()
# Answers with these Content-Types are skipped as not-image before the body
# is read; a missing Content-Type is allowed (the bytes are decoded anyway).
BINARY_CONTENT_TYPES = ('application/octet-stream', 'binary/octet-stream')

_STORED_NAME = re.compile(r'([0-9a-f]{%d})\.(jpg|png|gif|bmp|webp)' % HASH_CHARS)
_TEMP_NAME = re.compile(r'\.[0-9a-f]{%d}\.(jpg|png|gif|bmp|webp)\..+\.tmp' % HASH_CHARS)
_SHA1 = re.compile(r'[0-9a-fA-F]{40}')


# ---------------------------------------------------------------- input

def open_text(path):
    """Open ``path`` as UTF-8 text for csv, gunzipping it if it starts with the gzip magic."""
    with open(path, 'rb') as file:
        magic = file.read(2)
    if magic == b'\x1f\x8b':
        return gzip.open(path, 'rt', encoding='utf-8', newline='')
    return open(path, encoding='utf-8', newline='')


def read_entries(path, url_column=None, label_column=None, label_names=None):
    """Read the URL list at ``path`` into a list of :class:`Entry`.

    The file is a CSV when its first line names ``url_column`` (default: the
    first of ``image_url``, ``url`` present) or when a column is given;
    otherwise it holds ``url label`` lines (``#`` comments and blank lines
    ignored; the label is the rest of the line). ``label_names`` (a list)
    maps integer labels to names: label ``i`` becomes ``label_names[i]``.
    """
    try:
        with open_text(path) as stream:
            first_line = stream.readline()
            delimiter = _delimiter(first_line)
            header = next(csv.reader([first_line], delimiter=delimiter), [])
            url_key = url_column or next((c for c in URL_COLUMNS if c in header), None)
            lines = itertools.chain([first_line], stream)
            if url_key or label_column:
                entries = _read_csv(path, lines, url_key, label_column or LABEL_COLUMN,
                                    delimiter)
            else:
                entries = _read_lines(lines)
    except (OSError, UnicodeDecodeError, EOFError, csv.Error) as error:
        raise DataError(f'{path}: cannot read the URL list ({error})') from None
    if label_names is not None:
        entries = [Entry(e.url, _label_name(path, e, label_names)) for e in entries]
    return entries


def _delimiter(header_line):
    """The CSV delimiter of a header line: ``,``, ``;`` or a tab, whichever
    it holds most of (``,`` when none)."""
    counts = {d: header_line.count(d) for d in (',', ';', '\t')}
    best = max(counts, key=counts.get)
    return best if counts[best] else ','


def _read_csv(path, lines, url_key, label_key, delimiter=','):
    """Entries from CSV ``lines`` whose header names ``url_key`` and ``label_key``.

    Cells are read as :func:`~finetune.common.fileio.read_csv_cell` does,
    so a report this project wrote (a label ``=x`` written ``'=x``) is a
    list that gives the same labels.
    """
    reader = csv.DictReader(lines, delimiter=delimiter)
    for key in (url_key, label_key):
        if key not in (reader.fieldnames or ()):
            raise DataError(f'{path}: no column {key!r} (columns: {", ".join(reader.fieldnames or ())})')
    return [Entry(read_csv_cell((row[url_key] or '').strip()),
                  read_csv_cell((row[label_key] or '').strip()))
            for row in reader if any(row.values())]


def _read_lines(lines):
    """Entries from ``url label`` lines."""
    entries = []
    for line in lines:
        text = line.strip()
        if text and not text.startswith('#'):
            url, *label = text.split(None, 1)
            entries.append(Entry(url, label[0].strip() if label else ''))
    return entries


def _label_name(path, entry, label_names):
    """The name for integer label ``entry.label``; DataError if it is not an index."""
    if entry.label.isdigit() and int(entry.label) < len(label_names):
        return label_names[int(entry.label)]
    raise DataError(f'{path}: label {entry.label!r} of {entry.url} is not an index '
                    f'into the {len(label_names)} label names')


def read_placeholder_hashes(path):
    """SHA-1s (hex) from ``path``: the first word of each line, ``#`` comments ignored.

    ``sha1sum`` output works as is.
    """
    hashes = set()
    try:
        with open(path, encoding='utf-8') as file:
            for number, line in enumerate(file, 1):
                word = line.split('#', 1)[0].split()[:1]
                if word and not _SHA1.fullmatch(word[0]):
                    raise DataError(f'{path}:{number}: {word[0]!r} is not a 40-digit hex sha1')
                hashes.update(w.lower() for w in word)
    except (OSError, UnicodeDecodeError) as error:
        raise DataError(f'{path}: cannot read placeholder hashes ({error})') from None
    return hashes


# ---------------------------------------------------------------- checks

def safe_label(label):
    """``label`` stripped if it is a plain folder name, else None.

    Rejected: empty, ``.``/``..``, leading dot, path separators or ``:``,
    control characters, line breaks (``\u2028`` too: training refuses
    such class names), undecodable bytes, more than 200 UTF-8 bytes.
    """
    name = (label or '').strip()
    if (not name or name.startswith('.') or not images.is_usable_name(name)
            or len(name.encode('utf-8')) > 200
            or any(c in '/\\:' or unicodedata.category(c).startswith('C') for c in name)):
        return None
    return name


class _Skip(Exception):
    """An image that is not kept; ``args[0]`` is the report reason."""


def inspect_image(data, min_size):
    """Decode ``data`` fully; return the file extension of its format (``.jpg``...).

    Raises _Skip with a code of :data:`finetune.data.images.PROBLEMS`:
    ``not-image`` (unrecognised bytes), ``unsupported-format``, ``too-small``
    (a side under ``min_size`` pixels), ``too-large`` (decompression bomb),
    ``truncated-image`` or ``undecodable``.
    """
    try:
        with Image.open(io.BytesIO(data)) as image:
            extension = EXTENSIONS.get(image.format)
            if extension is None:
                raise _Skip(images.UNSUPPORTED_FORMAT)
            if min(image.size) < min_size:
                raise _Skip(images.TOO_SMALL)
            image.load()
    except _Skip:
        raise
    except Exception as error:  # PIL raises many types on corrupt data
        # the code alone: the report counts skips by reason
        raise _Skip(images.problem_of_exception(error).split(':')[0]) \
            from None
    return extension


def _image_content_only(url):
    """A ``check_headers`` callback that rejects non-image Content-Types of ``url``."""
    def check(headers):
        value = headers.get('Content-Type', '').split(';')[0].strip().lower()
        if value and not value.startswith('image/') and value not in BINARY_CONTENT_TYPES:
            raise TransferError(f'{url}: Content-Type {value}', images.NOT_IMAGE, False)
    return check


# ---------------------------------------------------------------- download

@dataclasses.dataclass
class Downloaded:
    """A worker's result: ``reason`` set for a skip, else the image bytes."""
    reason: str = ''
    data: bytes = b''
    sha1: str = ''
    extension: str = ''


@dataclasses.dataclass
class Settings:
    """Per-image download limits (seconds, counts, bytes, pixels) and placeholder SHA-1s."""
    timeout: float
    retries: int
    backoff: float
    max_bytes: int
    min_size: int
    placeholders: frozenset
    deadline: float


def download_image(url, settings):
    """Download and check one image; return a :class:`Downloaded` (never raises on bad data)."""
    try:
        data, _ = fetch_bytes(url, timeout=settings.timeout, retries=settings.retries,
                              backoff=settings.backoff, max_bytes=settings.max_bytes,
                              check_headers=_image_content_only(url),
                              deadline=settings.deadline)
    except TransferError as error:
        return Downloaded(reason=error.reason)
    sha1 = hashlib.sha1(data).hexdigest()
    if sha1 in settings.placeholders:
        return Downloaded(reason='placeholder')
    try:
        extension = inspect_image(data, settings.min_size)
    except _Skip as skip:
        return Downloaded(reason=skip.args[0])
    return Downloaded(data=data, sha1=sha1, extension=extension)


def _ordered_parallel(function, items, jobs):
    """Yield ``function(item)`` for each item in order, running ``jobs`` at once.

    At most ``4 * jobs`` results are computed ahead of the one yielded, which
    bounds memory to about that many images.
    """
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=jobs)
    items = iter(items)
    try:
        pending = collections.deque(pool.submit(function, item)
                                    for item in itertools.islice(items, 4 * jobs))
        while pending:
            result = pending.popleft().result()
            pending.extend(pool.submit(function, item) for item in itertools.islice(items, 1))
            yield result
    finally:
        pool.shutdown(wait=False, cancel_futures=True)


# ---------------------------------------------------------------- on disk

def _scan_stored_images(out_dir):
    """Map sha1 prefix -> ``label/name`` of images saved by earlier runs.

    Also deletes temporary files left by a killed run.
    """
    stored = {}
    for folder in os.scandir(out_dir):
        if not folder.is_dir(follow_symlinks=False) or safe_label(folder.name) != folder.name:
            continue
        for file in os.scandir(folder.path):
            match = _STORED_NAME.fullmatch(file.name)
            if match and file.is_file(follow_symlinks=False):
                stored.setdefault(match.group(1), f'{folder.name}/{file.name}')
            elif _TEMP_NAME.fullmatch(file.name):
                os.remove(file.path)
    return stored


def _journal_path(report_path):
    """Where the report is written while a run is in progress."""
    directory, name = os.path.split(report_path)
    return os.path.join(directory, f'.{name}.partial')


def _previous_paths(report_path):
    """Map url -> ``label/name`` for images an earlier run saved (report and journal)."""
    paths = {}
    for path in (report_path, _journal_path(report_path)):
        try:
            with open(path, encoding='utf-8', errors='replace',
                      newline='') as file:  # a killed run's last line may be cut
                for row in csv.DictReader(file):
                    row = {key: read_csv_cell(value or '')
                           for key, value in row.items() if key}
                    if row.get('status') in ('saved', 'present') and _is_stored_path(row.get('path')):
                        paths[row['url']] = row['path']
        except (OSError, UnicodeDecodeError, csv.Error):
            continue
    return paths


def _is_stored_path(path):
    """Whether ``path`` looks like ``label/<sha1 prefix>.<ext>`` written by this tool."""
    label, _, name = (path or '').partition('/')
    return safe_label(label) == label and bool(_STORED_NAME.fullmatch(name))


def _holds_sha1_prefix(path, prefix):
    """Whether the file at ``path`` exists and its SHA-1 starts with ``prefix``."""
    return os.path.isfile(path) and sha1_of_file(path).startswith(prefix)


class _ReportWriter:
    """Journals report rows as they come; :meth:`commit` writes the report.

    The journal (:func:`_journal_path`) is only ever appended to, so what
    runs killed one after another saved stays known to the next run, even
    when a later run was killed before reaching those entries again. The
    report itself is written once, atomically, at the end; the journal is
    then removed.
    """

    def __init__(self, report_path):
        self.report_path = report_path
        self.journal = _journal_path(report_path)
        os.makedirs(os.path.dirname(os.path.abspath(report_path)), exist_ok=True)
        self.file = _open_journal(self.journal)
        self.writer = csv.writer(self.file)

    def write(self, row):
        """Append one :class:`ReportRow` and flush it to disk."""
        self.writer.writerow(csv_row(row))
        self.file.flush()

    def commit(self, rows):
        """Write ``rows`` as the report and remove the journal."""
        self.file.close()
        write_csv(self.report_path, ReportRow._fields, rows)
        os.remove(self.journal)

    def close(self):
        """Close the journal, keeping it for the next run."""
        self.file.close()


def _open_journal(path):
    """``path`` opened to append CSV rows: the header first when it is new
    or empty, a line break first when a killed run left half a line."""
    last = b''
    if os.path.isfile(path) and os.path.getsize(path):
        with open(path, 'rb') as old:
            old.seek(-1, os.SEEK_END)
            last = old.read(1)
    file = open(path, 'a', encoding='utf-8', newline='')
    if not last:
        csv.writer(file).writerow(ReportRow._fields)
    elif last != b'\n':
        file.write('\r\n')
    return file


# ---------------------------------------------------------------- gather

class _Store:
    """Decides, in input order, what happens to each entry, and writes the images."""

    def __init__(self, out_dir, report_path):
        self.out_dir = os.path.realpath(out_dir)
        self.stored = _scan_stored_images(self.out_dir)
        self.previous = _previous_paths(report_path)
        self.claimed = {}

    def folder_label(self, label):
        """``label`` as a folder name inside out_dir, or None if it is not one."""
        name = safe_label(label)
        if name is None:
            return None
        folder = os.path.realpath(os.path.join(self.out_dir, name))
        return name if os.path.dirname(folder) == self.out_dir else None

    def plan(self, entry):
        """A final :class:`ReportRow` decided without downloading, or None to download."""
        label = self.folder_label(entry.label)
        if label is None:
            return ReportRow(entry.url, entry.label, 'skipped', 'bad-label', '')
        try:
            check_url(entry.url)
        except TransferError:
            return ReportRow(entry.url, entry.label, 'skipped', 'bad-url', '')
        path = self.previous.get(entry.url)
        if path and path.startswith(label + '/'):
            prefix = _STORED_NAME.fullmatch(path.partition('/')[2]).group(1)
            if _holds_sha1_prefix(os.path.join(self.out_dir, path), prefix):
                if prefix in self.claimed:
                    return ReportRow(entry.url, entry.label, 'skipped', 'duplicate',
                                     self.claimed[prefix])
                self.claimed[prefix] = path
                return ReportRow(entry.url, entry.label, 'present', '', path)
        return None

    def store(self, entry, downloaded):
        """Save a downloaded image unless it is a skip or a duplicate; return its row."""
        if downloaded.reason:
            return ReportRow(entry.url, entry.label, 'skipped', downloaded.reason, '')
        prefix = downloaded.sha1[:HASH_CHARS]
        if prefix in self.claimed:
            return ReportRow(entry.url, entry.label, 'skipped', 'duplicate', self.claimed[prefix])
        path = f'{self.folder_label(entry.label)}/{prefix}{downloaded.extension}'
        existing = self.stored.get(prefix)
        if existing and _holds_sha1_prefix(os.path.join(self.out_dir, existing), downloaded.sha1):
            self.claimed[prefix] = existing
            if existing == path:
                return ReportRow(entry.url, entry.label, 'present', '', path)
            return ReportRow(entry.url, entry.label, 'skipped', 'duplicate', existing)
        self.claimed[prefix] = path
        with atomic_write(os.path.join(self.out_dir, path)) as temporary:
            with open(temporary, 'wb') as file:
                file.write(downloaded.data)
        return ReportRow(entry.url, entry.label, 'saved', '', path)


def gather(entries, out_dir, jobs=8, timeout=10.0, retries=2, backoff=0.5,
           max_bytes=DEFAULT_MAX_BYTES, min_size=32, placeholder_hashes=(),
           report_path=None, progress=True, deadline=None):
    """Download ``entries`` into ``out_dir/<label>/``; return the report rows in input order.

    Args:
        entries: iterable of :class:`Entry` (``url``, ``label``).
        out_dir (str): root of the class folders (created if missing).
        jobs (int): downloads running at once.
        timeout (float): seconds allowed to connect and for each read.
        retries (int): extra attempts after a timeout, connection error or 5xx.
        backoff (float): seconds before the first retry, doubled each time.
        max_bytes (int): cap on the bytes read per image.
        min_size (int): smallest width and height kept, in pixels.
        placeholder_hashes: SHA-1 hex digests of images to skip as
            ``placeholder``, added to :data:`BUILTIN_PLACEHOLDER_SHA1S`.
        report_path (str or None): the CSV report; default
            ``<out_dir>/gather_report.csv``.
        progress (bool): draw a tqdm bar on stderr.
        deadline (float or None): seconds one image may take, retries
            included (default ``DEADLINE_TIMEOUTS`` x ``timeout``); a host
            that trickles bytes is skipped as ``deadline``.
    """
    _check_settings(jobs=jobs, timeout=timeout, retries=retries,
                    backoff=backoff, max_bytes=max_bytes, min_size=min_size,
                    deadline=deadline)
    entries = [Entry(*entry) for entry in entries]
    deadline = DEADLINE_TIMEOUTS * timeout if deadline is None else deadline
    os.makedirs(out_dir, exist_ok=True)
    report_path = report_path or os.path.join(out_dir, REPORT_NAME)
    settings = Settings(timeout, retries, backoff, max_bytes, min_size, frozenset(
        BUILTIN_PLACEHOLDER_SHA1S | {h.lower() for h in placeholder_hashes}),
        deadline)
    store = _Store(out_dir, report_path)
    planned = [store.plan(entry) for entry in entries]
    to_download = [e.url for e, row in zip(entries, planned) if row is None]
    downloads = _ordered_parallel(lambda url: download_image(url, settings), to_download, jobs)
    report = _ReportWriter(report_path)
    rows = []
    try:
        with tqdm(total=len(entries), unit='url', desc='gather', disable=not progress) as bar:
            for entry, row in zip(entries, planned):
                row = row or store.store(entry, next(downloads))
                report.write(row)
                rows.append(row)
                bar.update()
    except BaseException:
        report.close()
        raise
    finally:
        downloads.close()
    report.commit(rows)
    return rows


#: the values :func:`gather` takes (the CLI's argparse types are these)
SETTING_RANGES = {'jobs': positive_int, 'timeout': positive_float,
                  'retries': non_negative_int, 'backoff': non_negative_float,
                  'max_bytes': positive_int, 'min_size': non_negative_int,
                  'deadline': positive_float}


def _check_settings(**settings):
    """Refuse a setting outside :data:`SETTING_RANGES` (None: the default).

    Raises:
        DataError: naming the option of the setting (``--max-bytes`` for
            ``max_bytes``; ``--backoff`` has none on the command line).
    """
    for name, value in settings.items():
        what = value is not None and SETTING_RANGES[name].problem(value)
        if what:
            raise DataError(refusal('--' + name.replace('_', '-'), value,
                                    what))


def summarize(rows, report_path):
    """A few lines: counts by status, then skipped entries counted by reason."""
    statuses = collections.Counter(row.status for row in rows)
    reasons = collections.Counter(row.reason for row in rows if row.status == 'skipped')
    lines = [f'gather: {statuses["saved"]} saved, {statuses["present"]} already present, '
             f'{statuses["skipped"]} skipped; report: {report_path}']
    lines += [f'  {reason:<20} {count}' for reason, count in
              sorted(reasons.items(), key=lambda item: (-item[1], item[0]))]
    return '\n'.join(lines)


# ---------------------------------------------------------------- CLI


def gather_from_list(list_path, out_dir, url_column=None, label_column=None,
                     label_names=None, placeholder_hash_files=(),
                     placeholder_images=(), report_path=None, **settings):
    """Read the list at ``list_path`` and :func:`gather` it into
    ``out_dir``; returns the summary lines (see :func:`summarize`).

    ``label_names`` is a file naming integer labels, one per line;
    ``placeholder_hash_files`` and ``placeholder_images`` are files of
    SHA-1s and example images to skip; ``settings`` go to :func:`gather`.
    """
    report_path = report_path or os.path.join(out_dir, REPORT_NAME)
    inputs = [list_path, label_names or '', *placeholder_hash_files,
              *placeholder_images]
    for path in (report_path, _journal_path(report_path)):
        refuse_overwriting_inputs(path, inputs, '--report')
    names = read_class_names(label_names) if label_names else None
    entries = read_entries(list_path, url_column, label_column, names)
    placeholders = set()
    for path in placeholder_hash_files:
        placeholders |= read_placeholder_hashes(path)
    for path in placeholder_images:
        placeholders.add(sha1_of_file(path))
    rows = gather(entries, out_dir, placeholder_hashes=placeholders,
                  report_path=report_path, **settings)
    return summarize(rows, report_path)
