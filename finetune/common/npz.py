"""The one reader of ``.npz`` files that come from outside (model files,
trainer snapshots): no pickles, no allocation a header did not announce.

``numpy.load`` inflates a member before its shape can be checked, and
Chainer's ``serializers.load_npz`` loads with ``allow_pickle=True``, so a
crafted member runs code. :class:`NpzReader` opens the zip archive itself
and, when it is opened, reads every member's ``.npy`` header (version 1.0
or 2.0: shape, dtype, order) without its data, and checks it: a dtype a
model or snapshot may hold (bool, integers, floats; text only as a unicode
scalar, the JSON members), dimensions >= 0, and a size that is the zip's
declared uncompressed size of the member (so a compressed member cannot
inflate past what its header says), all members together at most
``max_bytes``. A member's data is read, exactly its declared bytes, only
when it is asked for (``reader[name]``), after the caller compared
:meth:`NpzReader.header` with what it expects. Every refusal is one
:class:`CheckpointError` line naming the file (or the option that gave it)
and the member.
"""
import collections.abc
import json
import math
import os
import re
import struct
import tokenize
import zipfile
import zlib

import numpy as np
from numpy.lib import format as npy_format

from finetune.common.errors import CheckpointError
from finetune.common.errors import one_line

#: Bytes of every member together, by default (a bound on what one file
#: may make this process allocate).
MAX_BYTES = 8 << 30
#: Members one archive may hold (each header is read when it is opened).
MAX_MEMBERS = 1 << 16
#: Characters of one text member (NumPy stores 4 bytes per character).
MAX_TEXT_CHARS = 1 << 24
#: dtype kinds a member may have: bool, signed and unsigned integers,
#: floats; 'U' (unicode) only as a scalar.
NUMERIC_KINDS = 'biuf'
_CHUNK = 1 << 24
#: What reading a header or the data of a crafted member may raise
#: (NumPy's header parser tokenizes the header text: TokenError; an
#: encrypted member: RuntimeError).
READ_ERRORS = (ValueError, TypeError, SyntaxError, EOFError, OverflowError,
               RecursionError, MemoryError, OSError, zipfile.BadZipFile,
               zlib.error, NotImplementedError, KeyError, RuntimeError,
               struct.error, tokenize.TokenError)

Header = collections.namedtuple('Header', 'shape dtype fortran offset info')
Header.__doc__ = """One member's ``.npy`` header.

Attributes:
    shape (tuple of int), dtype (numpy.dtype), fortran (bool): as declared.
    offset (int): bytes before the data (magic and header).
    info (zipfile.ZipInfo): the zip entry.
"""


def _read_into(member, data):
    """Fill the uint8 array ``data`` from the open zip ``member`` (which
    inflates and checks the CRC), in chunks of at most 16 MiB."""
    done = 0
    while done < len(data):
        chunk = member.read(min(_CHUNK, len(data) - done))
        if not chunk:
            raise EOFError('%d of %d bytes' % (done, len(data)))
        data[done:done + len(chunk)] = np.frombuffer(chunk, np.uint8)
        done += len(chunk)


def shown(name):
    """A member name as error messages show it: as it is when printable,
    else escaped (a crafted name cannot break the one-line message)."""
    return name if name.isprintable() else ascii(name)


class NpzReader(collections.abc.Mapping):
    """Read-only mapping ``member name -> numpy.ndarray`` of a ``.npz``
    whose headers were all checked when it was opened (see the module).

    Args:
        path (str): the file.
        label (str): how errors name the file (default ``path``), e.g.
            ``'--resume out/snapshot_iter_9'``.
        max_bytes (int): bound on the declared size of all members.
        kind (str): what the file should be, in the error for a file that
            is not a zip archive (``'snapshot'``).
        finite (bool): refuse float arrays (not scalars: a snapshot's best
            accuracy starts at -inf) that hold NaN or infinity when read.

    Raises:
        CheckpointError: not a readable ``.npz`` (missing, not a regular
            file: a FIFO would block, not a zip, truncated), a member that is not ``.npy``, named twice, a
            pickle (object dtype) or another dtype no model holds, a
            header that does not match the member's size, or too many
            bytes or members in all.
    """

    def __init__(self, path, label=None, max_bytes=MAX_BYTES, finite=False,
                 kind='.npz file'):
        self.path = path
        self.label = label or path
        self.finite = finite
        if os.path.exists(path) and not os.path.isfile(path):
            raise CheckpointError('%s: not a readable %s (not a regular '
                                  'file)' % (self.label, kind))
        try:
            self._zip = zipfile.ZipFile(path)
        except READ_ERRORS as e:
            raise CheckpointError('%s: not a readable %s (%s)'
                                  % (self.label, kind, one_line(e))) from None
        try:
            self._headers = self._read_headers(max_bytes)
        except BaseException:
            self._zip.close()
            raise

    # -- opening -------------------------------------------------------------

    def _read_headers(self, max_bytes):
        infos = self._zip.infolist()
        if len(infos) > MAX_MEMBERS:
            raise CheckpointError('%s: %d members, more than the %d a model '
                                  'or snapshot holds' % (self.label,
                                                         len(infos),
                                                         MAX_MEMBERS))
        total = sum(info.file_size for info in infos)
        if total > max_bytes:
            largest = max(infos, key=lambda info: info.file_size)
            raise CheckpointError(
                '%s: its members declare %d bytes (%s alone %d), more than '
                'the %d bytes allowed' % (self.label, total, ascii(
                    largest.filename), largest.file_size, max_bytes))
        headers = {}
        for info in infos:
            if not info.filename.endswith('.npy'):
                raise CheckpointError('%s: member %r is not a .npy array'
                                      % (self.label, info.filename))
            name = info.filename[:-len('.npy')]
            if name in headers:
                raise CheckpointError('%s: member %r appears twice'
                                      % (self.label, name))
            headers[name] = self._read_header(name, info)
        return headers

    def _read_header(self, name, info):
        try:
            with self._zip.open(info) as f:
                version = npy_format.read_magic(f)
                if version == (1, 0):
                    shape, fortran, dtype = \
                        npy_format.read_array_header_1_0(f)
                elif version == (2, 0):
                    shape, fortran, dtype = \
                        npy_format.read_array_header_2_0(f)
                else:
                    raise ValueError('.npy version %d.%d is not supported'
                                     % version)
                offset = f.tell()
        except READ_ERRORS as e:
            raise self.error(name, 'unreadable header (%s)' % one_line(e))
        self._check_dtype(name, shape, dtype)
        if any(not isinstance(n, int) or n < 0 for n in shape):
            raise self.error(name, 'bad shape %r' % (shape,))
        nbytes = math.prod(shape) * dtype.itemsize
        if info.file_size != offset + nbytes:
            raise self.error(name, 'its header declares %s %s (%d bytes) '
                             'but the archive holds %d' % (
                                 shape, dtype, nbytes,
                                 info.file_size - offset))
        return Header(tuple(shape), dtype, bool(fortran), offset, info)

    def _check_dtype(self, name, shape, dtype):
        if dtype.hasobject:
            raise self.error(name, 'holds Python objects (a pickle), '
                             'which are never loaded')
        if dtype.kind == 'U' and dtype.fields is None:
            if shape != ():
                raise self.error(name, 'a text array; only text scalars '
                                 'are read')
            if dtype.itemsize // 4 > MAX_TEXT_CHARS:
                raise self.error(name, 'text of %d characters, more than '
                                 '%d' % (dtype.itemsize // 4, MAX_TEXT_CHARS))
            return
        if dtype.kind not in NUMERIC_KINDS or dtype.fields is not None \
                or dtype.subdtype is not None:
            raise self.error(name, 'dtype %s is not a number, bool or text '
                             'scalar' % dtype.str)

    # -- the mapping ---------------------------------------------------------

    def error(self, name, what):
        """The one-line :class:`CheckpointError` about member ``name``."""
        return CheckpointError('%s: member %s: %s' % (self.label,
                                                      shown(name), what))

    def header(self, name):
        """The checked :data:`Header` of member ``name`` (KeyError if
        absent); reads no data."""
        return self._headers[name]

    @property
    def files(self):
        """Member names (without ``.npy``), as ``numpy.load``'s."""
        return list(self._headers)

    def __iter__(self):
        return iter(self._headers)

    def __len__(self):
        return len(self._headers)

    def __contains__(self, name):
        return name in self._headers

    def __getitem__(self, name):
        """Member ``name``'s data: a writable array of its header's shape
        and dtype (native byte order): exactly the bytes its header
        declares, read from the file into the array (stored members) or
        inflated in chunks of at most 16 MiB.

        Raises:
            KeyError: no such member (as ``numpy.load``'s mapping).
            CheckpointError: truncated or corrupt data (CRC), or
                non-finite values in a float array (with ``finite``).
        """
        header = self._headers[name]
        data = np.empty(header.info.file_size - header.offset, np.uint8)
        try:
            with self._zip.open(header.info) as f:
                head = f.read(header.offset)
                if header.info.compress_type == zipfile.ZIP_STORED:
                    self._read_stored(header, head, data)
                else:
                    _read_into(f, data)
        except READ_ERRORS as e:
            raise self.error(name, 'unreadable data (%s)' % one_line(e))
        array = data.view(header.dtype).reshape(
            header.shape, order='F' if header.fortran else 'C')
        if not array.dtype.isnative:
            array = array.astype(array.dtype.newbyteorder('='))
        if self.finite and array.dtype.kind == 'f' and array.ndim and \
                not np.isfinite(array).all():
            raise self.error(name, 'holds NaN or infinite values')
        return array

    def _read_stored(self, header, head, data):
        """An uncompressed member's data straight from the file into
        ``data`` (one copy, as ``numpy.fromfile``), checked against the
        member's CRC-32 as ``zipfile`` would (``head``: the .npy header
        bytes before it, read through ``zipfile``, which checked the local
        header)."""
        info = header.info
        archive = self._zip.fp  # zipfile seeks it before each of its reads
        archive.seek(info.header_offset)
        local = archive.read(30)
        if len(local) != 30:
            raise EOFError('truncated local header')
        name_size, extra_size = struct.unpack('<HH', local[26:30])
        archive.seek(info.header_offset + 30 + name_size + extra_size +
                     len(head))
        done, view = 0, memoryview(data)
        while done < len(data):
            count = archive.readinto(view[done:])
            if not count:
                raise EOFError('%d of %d bytes' % (done, len(data)))
            done += count
        if zlib.crc32(data, zlib.crc32(head)) != info.CRC:
            raise zipfile.BadZipFile('Bad CRC-32 for file %r'
                                     % info.filename)

    def close(self):
        self._zip.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


#: Nesting a JSON member may have (model metadata is 3 deep).
MAX_JSON_DEPTH = 64
_JSON_STRING = re.compile(r'"(?:[^"\\]|\\.)*(?:"|\Z)', re.DOTALL)
_NOT_BRACKET = re.compile(r'[^\[\]{}]+')


def json_depth(text):
    """How deep ``[``/``{`` nest in the JSON ``text`` (brackets inside
    strings do not count), in time linear in its length, without
    recursion."""
    brackets = _NOT_BRACKET.sub('', _JSON_STRING.sub('', text))
    if not brackets:
        return 0
    codes = np.frombuffer(brackets.encode('ascii'), np.uint8)
    steps = np.where((codes == ord('[')) | (codes == ord('{')), 1, -1)
    return int(np.cumsum(steps).max())


def parse_json(text, what, max_depth=MAX_JSON_DEPTH):
    """``json.loads(text)`` with the nesting bounded first.

    Args:
        what (str): names the text in errors (file and member).

    Raises:
        CheckpointError: nested deeper than ``max_depth`` or not JSON.
    """
    depth = json_depth(text)
    if depth > max_depth:
        raise CheckpointError('%s: JSON nested %d deep, more than %d'
                              % (what, depth, max_depth))
    try:
        return json.loads(text)
    except (ValueError, RecursionError) as e:
        raise CheckpointError('%s: not JSON (%s)'
                              % (what, one_line(e)[:200])) from None
