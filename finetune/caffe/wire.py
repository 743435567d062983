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


def repeated_numbers(buf, chunks, dtype):
    """Join the chunks of a repeated fixed-width field into one array.

    Args:
        buf: the buffer the chunks index.
        chunks: list of ``(wire_type, (begin, stop))``: packed (LEN) runs or
            single unpacked (I32/I64) elements, in file order.
        dtype: little-endian NumPy dtype, ``'<f4'`` or ``'<f8'``.

    Returns:
        1-D array; a zero-copy view of ``buf`` when there is one packed
        chunk (the usual case).
    """
    views = [np.frombuffer(buf, dtype=dtype, count=(stop - begin)
                           // np.dtype(dtype).itemsize, offset=begin)
             for _, (begin, stop) in chunks]
    if len(views) == 1:
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
