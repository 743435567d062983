"""Crafted caffemodels: every one a one-line CaffeModelError naming the file,
never an OverflowError, a MemoryError or a message split over lines."""
import numpy as np
import pytest

from finetune.caffe import schema
from finetune.caffe import wire
from finetune.caffe.caffemodel import MAX_LAYERS
from finetune.caffe.caffemodel import read_caffemodel
from finetune.common.errors import CaffeModelError


def layer_with_blob(blob_fields, name='ip'):
    """A V2 net of one InnerProduct layer whose blob is hand-encoded."""
    layer = schema.LayerParameter(name=name, type='InnerProduct')
    return wire.len_field(100, layer.SerializeToString()
                          + wire.len_field(7, blob_fields))


def shape(*dims):
    return wire.len_field(7, wire.len_field(1, b''.join(
        wire.encode_varint(d) for d in dims)))


def refusal(tmp_path, data):
    path = tmp_path / 'x.caffemodel'
    path.write_bytes(data)
    with pytest.raises(CaffeModelError) as e:
        read_caffemodel(str(path))
    message = str(e.value)
    assert message.startswith(str(path) + ': ') and '\n' not in message
    return message[len(str(path)) + 2:]


def test_negative_dims_are_refused(tmp_path):
    # int64 -1 is the 10-byte varint 2**64 - 1
    assert refusal(tmp_path, layer_with_blob(shape(2 ** 64 - 1))) == (
        'not a caffemodel: blob shape (-1,) has a negative dimension at '
        'byte 23')


def test_dims_whose_product_overflows_int64_are_refused(tmp_path):
    # 2**32 x 2**32 = 2**64, 0 in int64 arithmetic: no values would match
    message = refusal(tmp_path, layer_with_blob(shape(2 ** 32, 2 ** 32)))
    assert message == ('not a caffemodel: blob holds 0 values but its shape '
                       '(4294967296, 4294967296) needs 18446744073709551616 '
                       'at byte 23')


def test_unpacked_floats_are_one_run_not_an_object_each(tmp_path):
    """200,000 unpacked floats (5 bytes each, as some writers emit them)
    read back exactly; they are gathered as one strided run."""
    values = np.random.RandomState(0).normal(size=200000).astype('<f4')
    key = wire.encode_varint(5 << 3 | wire.I32)
    fields = shape(values.size) + b''.join(key + v.tobytes()
                                           for v in values)
    path = tmp_path / 'unpacked.caffemodel'
    path.write_bytes(layer_with_blob(fields))
    assert np.array_equal(read_caffemodel(str(path)).layer('ip').blobs[0],
                          values)
    runs = []
    for i in range(3):
        wire.add_chunk(runs, wire.I32, (10 + 5 * i, 14 + 5 * i), 4, 0)
    assert runs == [[10, 3, 5]]


def test_blob_data_in_too_many_pieces_is_refused(tmp_path):
    # unpacked floats with an empty field after every second one: each run
    # holds two (the first two set its stride, the third breaks it), so
    # 2 x (MAX_RUNS + 1) floats make MAX_RUNS + 1 runs
    key = wire.encode_varint(5 << 3 | wire.I32)
    piece = key + b'\0\0\0\0'
    filler = wire.len_field(15, b'')
    count = 2 * (wire.MAX_RUNS + 1)
    fields = shape(count) + b''.join(
        piece + (filler if i % 2 else b'') for i in range(count))
    assert 'blob data in more than 65536 pieces' in refusal(
        tmp_path, layer_with_blob(fields))


def test_too_many_layers_are_refused(tmp_path):
    empty_layer = wire.len_field(100, b'')  # 3 bytes: 2 of key, 1 length
    assert refusal(tmp_path, empty_layer * (MAX_LAYERS + 1)) == (
        'not a caffemodel: more than %d layers at byte %d'
        % (MAX_LAYERS, 3 * MAX_LAYERS))


def test_layer_names_with_a_newline_are_refused(tmp_path):
    message = refusal(tmp_path, layer_with_blob(
        shape(1) + wire.len_field(5, b'\0\0\0\0'), name='evil\nname'))
    assert message == ("not a caffemodel: layer 'evil\\nname': its name, "
                       'type or blob names hold control characters')
