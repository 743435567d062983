"""Protocol-buffer wire format, read straight from a buffer.

A caffemodel's weights are a few packed float fields of up to 150 MB each.
Walking the wire format by hand lets :mod:`finetune.caffe.caffemodel` turn
those fields into NumPy views of a memory-mapped file (no copy, no Python
objects per float) and hand only the small remaining bytes to protobuf.
"""
import numpy as np

VARINT, I64, LEN, I32 = 0, 1, 2, 5


class WireError(ValueError):
    """The bytes are not valid protobuf; ``offset`` is where it failed."""

    def __init__(self, message, offset):
        super().__init__('%s at byte %d' % (message, offset))
        self.offset = offset


class Truncated(WireError):
    """A field runs past the end of the buffer."""


def read_varint(buf, pos, end):
    """Return ``(value, next_pos)`` for the base-128 varint at ``pos``."""
    value = shift = 0
    start = pos
    while True:
        if pos >= end:
            raise Truncated('varint runs past the end', start)
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7
        if shift > 63:
            raise WireError('varint longer than 10 bytes', start)


def iter_fields(buf, start, end):
    """Yield ``(field_number, wire_type, value, span)`` for each field.

    ``value`` is an int for VARINT, and a ``(begin, stop)`` byte range of
    ``buf`` for LEN, I32 and I64 fields; ``span`` is the byte range of the
    whole field, key included. Groups (wire types 3, 4, long
    deprecated) and unknown wire types raise :class:`WireError`.
    """
    pos = start
    while pos < end:
        field_start = pos
        key, pos = read_varint(buf, pos, end)
        number, wire_type = key >> 3, key & 7
        if number == 0:
            raise WireError('field number 0', field_start)
        if wire_type == VARINT:
            value, pos = read_varint(buf, pos, end)
        elif wire_type == LEN:
            length, pos = read_varint(buf, pos, end)
            value = (pos, pos + length)
            pos += length
        elif wire_type == I32:
            value = (pos, pos + 4)
            pos += 4
        elif wire_type == I64:
            value = (pos, pos + 8)
            pos += 8
        else:
            raise WireError('unsupported wire type %d' % wire_type,
                            field_start)
        if pos > end:
            raise Truncated('field %d needs %d bytes more than remain'
                            % (number, pos - end), field_start)
        yield number, wire_type, value, (field_start, pos)


#: Most separate runs one repeated number field may come in. Caffe writes
#: one packed run per blob; unpacked elements written one after another
#: form one run (see :func:`add_chunk`), so only a crafted file has more.
MAX_RUNS = 2 ** 16


def add_chunk(runs, wire_type, span, itemsize, offset):
    """Add one occurrence of a repeated fixed-width field to ``runs``.

    Args:
        runs (list): ``[begin, count, stride]`` runs so far, in file order;
            changed in place.
        wire_type: LEN (a packed run) or I32/I64 (one unpacked element).
        span (tuple): ``(begin, stop)`` of the field's value.
        itemsize (int): 4 or 8.
        offset (int): where the field starts, for messages.

    An unpacked element that follows the previous one at the same distance
    as the one before extends that run, so a million unpacked floats cost
    one run, not a million Python objects.

    Raises:
        WireError: a packed run that is not a whole number of elements,
            or more than :data:`MAX_RUNS` runs.
    """
    begin, stop = span
    if wire_type == LEN:
        if (stop - begin) % itemsize:
            raise WireError('packed blob data of %d bytes is not a multiple '
                            'of %d' % (stop - begin, itemsize), begin)
        runs.append([begin, (stop - begin) // itemsize, itemsize])
    elif runs and runs[-1][2] != itemsize and (
            runs[-1][1] == 1 and begin - runs[-1][0] > itemsize or
            begin == runs[-1][0] + runs[-1][1] * runs[-1][2]):
        last = runs[-1]
        if last[1] == 1:
            last[2] = begin - last[0]
        last[1] += 1
    else:
        runs.append([begin, 1, 0])  # stride set by the next element
    if len(runs) > MAX_RUNS:
        raise WireError('blob data in more than %d pieces' % MAX_RUNS,
                        offset)


def repeated_numbers(buf, runs, dtype):
    """Join the runs of a repeated fixed-width field into one array.

    Args:
        buf: the buffer the runs index.
        runs: ``[begin, count, stride]`` from :func:`add_chunk`.
        dtype: little-endian NumPy dtype, ``'<f4'`` or ``'<f8'``.

    Returns:
        1-D array; a zero-copy view of ``buf`` when there is one packed
        run (the usual case).
    """
    dtype = np.dtype(dtype)
    views = [np.ndarray((count,), dtype, buffer=buf, offset=begin,
                        strides=(stride or dtype.itemsize,))
             for begin, count, stride in runs]
    if len(views) == 1 and views[0].flags.c_contiguous:
        return views[0]
    if not views:
        return np.zeros(0, dtype=dtype)
    return np.concatenate(views)


def packed_varints(buf, begin, stop):
    """Decode a packed run of varints (small: blob shapes) into a list."""
    values = []
    pos = begin
    while pos < stop:
        value, pos = read_varint(buf, pos, stop)
        values.append(value)
    return values


def encode_varint(value):
    """The base-128 varint bytes of a non-negative int."""
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def len_field(number, payload):
    """A length-delimited field: key, length, then ``payload`` bytes."""
    return (encode_varint(number << 3 | LEN) + encode_varint(len(payload))
            + payload)
