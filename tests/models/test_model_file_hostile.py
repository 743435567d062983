"""Crafted model files (issue 20): each is refused in one line naming the
file, by ``finetune.load`` (a CheckpointError) and by the commands that
read model files (exit 2), before anything it describes is allocated and
without running a pickle. The valid file they are made from is the real
LeNet converted by ``finetune.convert`` (the ``digits`` fixture)."""
import json
import os
import struct
import sys
import zipfile
import zlib

import numpy as np
import pytest

import finetune
from finetune.common.errors import CheckpointError
from tests.support.paths import data_path
from tests.support.processes import RunsCommand
from tests.support.processes import run_module


def members(path):
    """{name: array} of a valid file (an independent reader: numpy's)."""
    with np.load(path, allow_pickle=False) as npz:
        return {name: npz[name] for name in npz.files}


def write_members(path, arrays):
    """``arrays`` as an .npz (numpy pickles object arrays when saving)."""
    with open(path, 'wb') as f:
        np.savez(f, **arrays)
    return str(path)


def with_meta(source, path, change=None, text=None):
    """A copy of the model file ``source`` whose metadata is ``change``d
    (a function of the dict) or replaced by the JSON ``text``."""
    arrays = members(source)
    if text is None:
        meta = json.loads(str(arrays['__meta__']))
        change(meta)
        text = json.dumps(meta)
    arrays['__meta__'] = np.array(text)
    return write_members(path, arrays)


def with_member(source, path, name, value):
    arrays = members(source)
    arrays[name] = value
    return write_members(path, arrays)


def drop(key):
    return lambda meta: meta.pop(key)


def setting(key, value):
    return lambda meta: meta.update({key: value})


def preprocess(key, value):
    return lambda meta: meta['preprocess'].update({key: value})


def huge_ip1(meta):
    meta['prototxt'] = meta['prototxt'].replace('num_output: 500',
                                                'num_output: 1000000000')


def names(count):
    return lambda meta: meta.update(class_names=meta['class_names'][:count])


META_CASES = {
    'n_classes is text': (setting('n_classes', 'ten'), 'n_classes'),
    'n_classes zero': (setting('n_classes', 0), 'n_classes'),
    'n_classes huge': (setting('n_classes', 10 ** 12), 'n_classes'),
    'nine names for ten outputs': (names(9), '9 class_names'),
    'a name with a newline': (lambda m: m['class_names'].__setitem__(
        3, 'three\nerror: fake'), 'class_names'),
    'an empty name': (lambda m: m['class_names'].__setitem__(0, ''),
                      'class_names'),
    'names not a list': (setting('class_names', 'abc'), 'class_names'),
    'no arch': (drop('arch'), 'arch'),
    'unknown arch': (setting('arch', 'vgg'), 'arch'),
    'no prototxt': (drop('prototxt'), 'prototxt'),
    'num_output 1e9': (huge_ip1, 'outputs'),
    'size 0x0': (preprocess('size', [0, 0]), 'size'),
    'size huge': (preprocess('size', [10 ** 6, 10 ** 6]), 'size'),
    'size text': (preprocess('size', 'big'), 'size'),
    'crop larger than size': (preprocess('crop_size', 29), 'crop_size'),
    'scale zero': (preprocess('scale', 0), 'scale'),
    'scale NaN': (preprocess('scale', float('nan')), 'scale'),
    'two channels': (preprocess('channels', 2), 'channels'),
    'no preprocess': (drop('preprocess'), 'preprocess'),
    'version 2': (setting('version', 2), 'version'),
}

TEXT_CASES = {
    'truncated JSON': (lambda text: text[:len(text) // 2], 'not JSON'),
    'nested 100,000 deep': (lambda text: '[' * 100000 + ']' * 100000,
                            'nested 100000 deep'),
    'a JSON number': (lambda text: '5', 'not a JSON object'),
}


def command_error(main, argv, capsys):
    """The stderr of the command-line ``main(argv)`` that exits with 2."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    return capsys.readouterr().err


def assert_one_line(path, expected, capsys):
    """``finetune.load`` and ``python -m finetune.predict`` refuse
    ``path`` in one line naming it and saying ``expected``."""
    from finetune.predict import main
    with pytest.raises(CheckpointError) as info:
        finetune.load(path)
    message = str(info.value)
    assert len(message.splitlines()) == 1 and path in message, message
    assert expected in message, message
    err = command_error(main, ['--model', path, data_path('cat.jpg')],
                        capsys)
    assert err.splitlines() == ['error: ' + message]


@pytest.mark.parametrize('case', sorted(META_CASES))
def test_metadata_outside_the_schema_is_one_line(digits, tmp_path, case,
                                                  capsys):
    change, expected = META_CASES[case]
    path = with_meta(digits[1], tmp_path / 'model.npz', change)
    assert_one_line(path, expected, capsys)


@pytest.mark.parametrize('case', sorted(TEXT_CASES))
def test_metadata_that_is_not_bounded_json_is_one_line(digits, tmp_path,
                                                       case, capsys):
    edit, expected = TEXT_CASES[case]
    text = str(members(digits[1])['__meta__'])
    path = with_meta(digits[1], tmp_path / 'model.npz', text=edit(text))
    assert_one_line(path, expected, capsys)


@pytest.mark.parametrize('name', ['__meta__', '__mean__', 'ip1/W'])
def test_a_pickled_member_is_never_unpickled(digits, tmp_path, name,
                                              capsys):
    marker = str(tmp_path / 'pwned')
    payload = np.empty((), dtype=object)
    payload[()] = RunsCommand(marker)
    path = with_member(digits[1], tmp_path / 'model.npz', name, payload)
    expected = 'member %s: holds Python objects (a pickle)' % name
    assert_one_line(path, expected, capsys)
    for command in (['finetune.predict', '--model', path,
                     data_path('cat.jpg')],
                    ['finetune.export', '--model', path, '-o',
                     str(tmp_path / 'm.onnx')]):
        result = run_module(*command)
        assert result.returncode == 2, result.stderr[-2000:]
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and expected in lines[0], result.stderr
    assert not os.path.exists(marker)
    assert not (tmp_path / 'm.onnx').exists()


@pytest.mark.parametrize('name, value, expected', [
    ('conv1/W', 'nan', 'member conv1/W: holds NaN or infinite values'),
    ('ip2/b', 'inf', 'member ip2/b: holds NaN or infinite values'),
    ('__mean__', 'nan', 'member __mean__: holds NaN or infinite values'),
])
def test_non_finite_weights_are_refused_naming_the_member(
        digits, tmp_path, name, value, expected, capsys):
    array = members(digits[1])[name].copy()
    array.flat[array.size // 2] = float(value)
    path = with_member(digits[1], tmp_path / 'model.npz', name, array)
    assert_one_line(path, expected, capsys)


@pytest.mark.parametrize('name, value, expected', [
    ('ip2/W', np.zeros((10, 499), np.float32), 'member ip2/W'),
    ('ip2/W', np.zeros((11, 500), np.float32), 'member ip2/W'),
    ('conv1/W', np.zeros((20, 1, 5, 5), np.float64), 'member conv1/W'),
    ('conv1/b', np.zeros((20,), np.int32), 'member conv1/b'),
    ('extra/W', np.zeros(3, np.float32), 'unexpected extra/W'),
    ('__mean__', np.zeros((2, 1, 1), np.float32), 'member __mean__'),
    ('__mean__', np.zeros((1, 0, 5), np.float32), 'member __mean__'),
    ('__meta__', np.zeros(3), 'member __meta__: is not JSON text'),
    ('conv1/W', np.array(['a', 'b']), 'member conv1/W: a text array'),
    ('conv1/W', np.zeros(2, [('a', 'f4')]), 'member conv1/W: dtype'),
    ('conv1/W', np.zeros(2, complex), 'member conv1/W: dtype'),
])
def test_members_that_do_not_fit_are_one_line(digits, tmp_path, name,
                                              value, expected, capsys):
    path = with_member(digits[1], tmp_path / 'model.npz', name, value)
    assert_one_line(path, expected, capsys)


def test_a_missing_member_is_one_line(digits, tmp_path, capsys):
    arrays = members(digits[1])
    del arrays['conv2/b']
    path = write_members(tmp_path / 'model.npz', arrays)
    assert_one_line(path, 'missing conv2/b', capsys)


def test_a_flipped_data_byte_fails_the_crc_naming_the_member(digits,
                                                             tmp_path,
                                                             capsys):
    path = str(tmp_path / 'model.npz')
    data = bytearray(open(digits[1], 'rb').read())
    with zipfile.ZipFile(digits[1]) as archive:
        member = archive.getinfo('ip1/W.npy')
    data[member.header_offset + 1000000] ^= 0x10  # inside its 1.6 MB
    with open(path, 'wb') as f:
        f.write(data)
    assert_one_line(path, 'member ip1/W: unreadable data (Bad CRC-32',
                    capsys)


def test_a_fifo_is_refused_without_blocking(tmp_path):
    """numpy.load(FIFO) waits for a writer forever (in a subprocess with a
    timeout, so that a regression fails instead of hanging the suite)."""
    fifo = str(tmp_path / 'model.npz')
    os.mkfifo(fifo)
    result = run_module('finetune.predict', '--model', fifo,
                        data_path('cat.jpg'), timeout=120)
    assert result.returncode == 2, result.stderr[-2000:]
    assert result.stderr.splitlines() == [
        'error: %s: not a readable model file (the .npz finetune.train or '
        'finetune.convert writes) (not a regular file)' % fifo]


def test_a_caffemodel_says_to_convert_it(lenet_files):
    for kind in ('caffemodel', 'prototxt'):
        path = lenet_files[kind]
        with pytest.raises(CheckpointError) as info:
            finetune.load(path)
        assert str(info.value) == (
            '%s: a %s, not a finetune model file; convert the caffemodel '
            'first: python -m finetune.convert' % (path, kind))


def deflated_zeros(prefix, size, chunk=1 << 24):
    """(raw deflate stream, CRC-32) of ``prefix`` + ``size`` zero bytes,
    made in seconds: after a full flush, each chunk of zeros compresses to
    the same bytes."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    head = compressor.compress(prefix) + compressor.flush(zlib.Z_FULL_FLUSH)
    zeros = bytes(chunk)
    block = compressor.compress(zeros) + compressor.flush(zlib.Z_FULL_FLUSH)
    assert size % chunk == 0
    crc = zlib.crc32(prefix)
    for _ in range(size // chunk):
        crc = zlib.crc32(zeros, crc)
    return head + block * (size // chunk) + compressor.flush(), crc


def write_zip64(path, entries):
    """A zip archive of ``entries``: (name, method, crc, data, size), each
    with ZIP64 sizes (what ``zipfile`` writes for members over 4 GiB)."""
    central, offset = [], 0
    with open(path, 'wb') as f:
        for name, method, crc, data, size in entries:
            name = name.encode()
            extra = struct.pack('<HHQQ', 1, 16, size, len(data))
            f.write(struct.pack('<IHHHHHIIIHH', 0x04034b50, 45, 0, method,
                                0, 0x21, crc, 0xFFFFFFFF, 0xFFFFFFFF,
                                len(name), len(extra)) + name + extra)
            f.write(data)
            central.append(struct.pack(
                '<IHHHHHHIIIHHHHHII', 0x02014b50, 45, 45, 0, method, 0,
                0x21, crc, 0xFFFFFFFF, 0xFFFFFFFF, len(name), len(extra), 0,
                0, 0, 0, offset) + name + extra)
            offset = f.tell()
        directory = b''.join(central)
        f.write(directory)
        f.write(struct.pack('<IHHHHIIH', 0x06054b50, 0, 0, len(central),
                            len(central), len(directory), offset, 0))


@pytest.fixture(scope='module', params=[1, 4])
def zip_bomb(digits, tmp_path_factory, request):
    """The LeNet model file whose ``conv1/W`` member (1 or 5 MB deflated)
    inflates to a 1 or 4 GiB float32 (N, 1024, 1024) array; 1 GiB is
    within the bound on a model file's size, 4 GiB is not."""
    import io
    gib = request.param
    entries = []
    for name, array in members(digits[1]).items():
        if name == 'conv1/W':
            header = io.BytesIO()
            np.lib.format.write_array_header_2_0(header, {
                'descr': '<f4', 'fortran_order': False,
                'shape': (gib * 256, 1024, 1024)})
            prefix = header.getvalue()
            data, crc = deflated_zeros(prefix, gib << 30)
            entries.append((name + '.npy', zipfile.ZIP_DEFLATED, crc, data,
                            len(prefix) + (gib << 30)))
            continue
        member = io.BytesIO()
        np.lib.format.write_array(member, array)
        raw = member.getvalue()
        entries.append((name + '.npy', zipfile.ZIP_STORED, zlib.crc32(raw),
                        raw, len(raw)))
    path = str(tmp_path_factory.mktemp('bomb') / 'model.npz')
    write_zip64(path, entries)
    return path


def refusal_and_peak_memory(path):
    """(the CheckpointError line, peak RSS in KiB) of ``finetune.load(path)``
    in a fresh process."""
    import subprocess
    script = (
        'import sys, finetune\n'
        'from finetune.common.errors import CheckpointError\n'
        'try:\n'
        '    finetune.load(sys.argv[1])\n'
        'except CheckpointError as e:\n'
        '    print(e)\n'
        # VmHWM, the process's own peak: ru_maxrss counts the parent's too
        'print(next(int(line.split()[1]) for line in open(\'/proc/self/'
        'status\') if line.startswith(\'VmHWM:\')))\n')
    result = subprocess.run([sys.executable, '-c', script, path],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    message, peak_kib = result.stdout.splitlines()
    return message, int(peak_kib)


def test_a_zip_bomb_member_is_refused_before_it_is_inflated(zip_bomb):
    with zipfile.ZipFile(zip_bomb) as archive:  # a valid archive
        member = archive.getinfo('conv1/W.npy')
    assert member.file_size > 1 << 30
    assert member.compress_size < member.file_size / 800
    message, peak_kib = refusal_and_peak_memory(zip_bomb)
    assert peak_kib < 500 * 1024, peak_kib  # 1 or 4 GiB before the fix
    assert message.startswith(zip_bomb + ': ') and 'conv1/W' in message


def test_a_stored_prototxt_larger_than_its_weights_allocates_nothing(
        digits, tmp_path):
    """A 400x400 input makes ip1 (500, 470450): 941 MB the file does not
    hold (its ip1/W is (500, 800)); the network is refused while it is
    built, before any such weight is filled."""
    def larger_input(meta):
        meta['prototxt'] = meta['prototxt'].replace(
            'dim: 28\n      dim: 28', 'dim: 400\n      dim: 400')
        assert 'dim: 400' in meta['prototxt']
    path = with_meta(digits[1], tmp_path / 'model.npz', larger_input)
    message, peak_kib = refusal_and_peak_memory(path)
    assert peak_kib < 500 * 1024, peak_kib
    assert message == ('%s: member ip1/W: shape (500, 800), but its network '
                       'has a (500, 470450) weight there' % path)


def test_nothing_is_written_that_load_would_refuse(digits, tmp_path):
    """The schema guards the writer too: a model file whose metadata the
    loader refuses (a class name of two lines, an image side past
    MAX_SIDE) is never written."""
    from finetune.data.transforms import CaffePreprocess
    from finetune.models.model_file import load_model
    from finetune.models.model_file import save_model
    model, meta, prep = load_model(digits[1])
    out = tmp_path / 'm.npz'
    two_lines = list(meta['class_names'])
    two_lines[3] = 'three\nfour'
    refused = r'm\.npz: metadata __meta__: '
    with pytest.raises(CheckpointError, match=refused + 'class_names'):
        save_model(str(out), model, two_lines, prep)
    huge = CaffePreprocess(size=(5000, 5000), crop_size=None, mean=prep.mean,
                           scale=prep.scale, channels=prep.channels)
    with pytest.raises(CheckpointError, match=refused + 'preprocess size'):
        save_model(str(out), model, meta['class_names'], huge)
    assert os.listdir(tmp_path) == []
