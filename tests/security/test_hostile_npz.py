"""Generated hostile .npz files (issue 20), as property tests with a fixed
seed: a valid model file (the real LeNet, converted) and a valid trainer
snapshot (a small Chainer trainer of the same parts as finetune.train's:
a SerialIterator with a seeded order, MomentumSGD state, a LogReport) have
members changed (shape, dtype, object arrays, added, removed, random JSON
metadata) or their bytes flipped or cut, written plain or deflated. The
reader either loads exactly what the file holds (numpy's own reader is the
reference) or raises a one-line CheckpointError naming the file; never
another exception, never a pickle loaded."""
import io
import json
import os
import tempfile
import zipfile

import chainer
import chainer.links as L
import numpy as np
from hypothesis import HealthCheck
from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st

from finetune.common.errors import CheckpointError
from finetune.common.fileio import write_npz
from finetune.data.loader import SeededOrderSampler
from finetune.models.model_file import load_model
from finetune.training.snapshot import load_snapshot
from tests.support.processes import RunsCommand

SETTINGS = settings(derandomize=True, max_examples=200, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])

DTYPES = ['float16', 'float32', 'float64', 'int8', 'int64', 'uint8', 'bool',
          'complex64', 'U3', 'S3', 'object', 'V4', [('a', '<f4')], '>f4']

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-10 ** 12, 10 ** 12)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=20),
    lambda children: st.lists(children, max_size=5)
    | st.dictionaries(st.text(max_size=10), children, max_size=5),
    max_leaves=20)


def members(path):
    with np.load(path, allow_pickle=False) as npz:
        return {name: npz[name] for name in npz.files}


def npz_bytes(arrays, compressed=False):
    """The .npz numpy writes for ``arrays`` (object arrays pickled),
    deflated with ``compressed`` (``np.savez_compressed``)."""
    buffer = io.BytesIO()
    (np.savez_compressed if compressed else np.savez)(buffer, **arrays)
    return buffer.getvalue()


def mutations(names):
    """Strategy of (kind, arguments) changes to a file of ``names``."""
    name = st.sampled_from(sorted(names))
    shape = st.lists(st.integers(0, 12), max_size=4).map(tuple)
    return st.one_of(
        st.tuples(st.just('shape'), name, shape),
        st.tuples(st.just('dtype'), name, st.sampled_from(range(len(DTYPES)))),
        st.tuples(st.just('pickle'), name),
        st.tuples(st.just('drop'), name),
        st.tuples(st.just('add'), st.text(min_size=1, max_size=12), shape),
        st.tuples(st.just('json'), name, json_values),
        st.tuples(st.just('flip'), st.integers(0, len(names) - 1),
                  st.integers(0, 200), st.integers(1, 255)),
        st.tuples(st.just('cut'), st.floats(0, 1)))


def mutate(arrays, change, marker, compressed=False):
    """(bytes of the changed file, the arrays it holds when its members
    were changed, else None: then it holds ``arrays`` if readable)."""
    kind, args = change[0], change[1:]
    arrays = dict(arrays)
    if kind == 'shape':
        arrays[args[0]] = np.ones(args[1], np.float32)
    elif kind == 'dtype':
        dtype = DTYPES[args[1]]
        try:
            arrays[args[0]] = arrays[args[0]].astype(dtype)
        except (ValueError, TypeError):  # text to numbers
            arrays[args[0]] = np.zeros(arrays[args[0]].shape, dtype)
    elif kind == 'pickle':
        arrays[args[0]] = np.empty((), object)
        arrays[args[0]][()] = RunsCommand(marker)
    elif kind == 'drop':
        del arrays[args[0]]
    elif kind == 'add':
        arrays[args[0].replace('\x00', '')] = np.ones(args[1], np.float32)
    elif kind == 'json':
        arrays[args[0]] = np.array(json.dumps(args[1]))
    if kind not in ('flip', 'cut'):
        return npz_bytes(arrays, compressed), arrays
    data = bytearray(npz_bytes(arrays, compressed))
    if kind == 'cut':
        return bytes(data[:int(len(data) * args[0])]), None
    with zipfile.ZipFile(io.BytesIO(bytes(data))) as archive:
        offset = archive.infolist()[args[0]].header_offset
    position = min(offset + args[1], len(data) - 1)
    data[position] ^= args[2]
    return bytes(data), None


def write(directory, data, name):
    path = os.path.join(directory, name)
    with open(path, 'wb') as f:
        f.write(data)
    return path


def assert_one_line(error, path):
    message = str(error)
    assert len(message.splitlines()) == 1 and message.startswith(path), \
        message


# -- model files -------------------------------------------------------------


def meta_mutations(names):
    """Changes of one metadata field to a random JSON value."""
    fields = st.sampled_from(['format', 'version', 'arch', 'n_classes',
                              'class_names', 'layer_names', 'preprocess',
                              'prototxt', 'size', 'crop_size', 'scale',
                              'channels'])
    return st.tuples(st.just('meta'), fields, json_values)


def change_meta(arrays, field, value, compressed=False):
    meta = json.loads(str(arrays['__meta__']))
    target = meta['preprocess'] if field in ('size', 'crop_size', 'scale',
                                             'channels') else meta
    target[field] = value
    arrays = dict(arrays)
    arrays['__meta__'] = np.array(json.dumps(meta))
    return npz_bytes(arrays, compressed), arrays


def check_model(path, arrays):
    """``load_model(path)``: what ``arrays`` (the file's members) hold, or
    a one-line CheckpointError."""
    try:
        model, meta, preprocess = load_model(path)
    except CheckpointError as e:
        assert_one_line(e, path)
        return False
    held = arrays if arrays is not None else members(path)
    assert meta == json.loads(str(held['__meta__']))
    assert model.n_classes == meta['n_classes'] == len(meta['class_names'])
    params = dict(model.namedparams())
    for name, array in held.items():
        if not name.startswith('__'):
            assert np.array_equal(params['/' + name].array, array), name
    assert preprocess.mean.shape[0] == meta['preprocess']['channels']
    assert np.isfinite(preprocess.mean).all()
    return True


def test_generated_model_files(digits):
    original = members(digits[1])
    loads = []

    @SETTINGS
    @given(st.one_of(mutations(original), meta_mutations(original)),
           st.booleans())
    def check(change, compressed):
        with tempfile.TemporaryDirectory() as directory:
            marker = os.path.join(directory, 'pwned')
            if change[0] == 'meta':
                data, arrays = change_meta(original, *change[1:],
                                           compressed)
            else:
                data, arrays = mutate(original, change, marker, compressed)
            path = write(directory, data, 'model.npz')
            loads.append(check_model(path, arrays))
            assert not os.path.exists(marker)

    check()
    assert any(loads) and not all(loads)  # both outcomes were generated


# -- trainer snapshots -------------------------------------------------------


def make_trainer(out):
    """A small trainer: a Linear classifier over 10 examples, MomentumSGD,
    a SerialIterator with a seeded order, LogReport."""
    rng = np.random.RandomState(0)
    dataset = chainer.datasets.TupleDataset(
        rng.rand(10, 4).astype(np.float32),
        rng.randint(0, 3, 10).astype(np.int32))
    model = L.Classifier(chainer.Sequential(L.Linear(4, 3)))
    optimizer = chainer.optimizers.MomentumSGD(0.1)
    optimizer.setup(model)
    iterator = chainer.iterators.SerialIterator(
        dataset, 3, order_sampler=SeededOrderSampler(0))
    updater = chainer.training.StandardUpdater(iterator, optimizer)
    trainer = chainer.training.Trainer(updater, (2, 'epoch'), out=out)
    trainer.extend(chainer.training.extensions.LogReport())
    return trainer


def snapshot_of_a_run(directory):
    trainer = make_trainer(directory)
    trainer.run()
    serializer = chainer.serializers.DictionarySerializer()
    serializer.save(trainer)
    path = os.path.join(directory, 'snapshot')
    write_npz(path, serializer.target)
    return path


def check_snapshot_load(path, arrays, directory):
    """``load_snapshot`` into a fresh trainer: the updater then holds what
    the file holds, or a one-line CheckpointError."""
    trainer = make_trainer(directory)
    try:
        load_snapshot(path, trainer)
    except CheckpointError as e:
        assert_one_line(e, '--resume ' + path)
        return False
    held = arrays if arrays is not None else members(path)
    state = chainer.serializers.DictionarySerializer()
    state.save(trainer.updater)
    for key, value in state.target.items():
        if 'updater/' + key in held:
            assert np.array_equal(value, held['updater/' + key]), key
    return True


def test_generated_snapshots(tmp_path_factory):
    directory = str(tmp_path_factory.mktemp('snapshot'))
    original = members(snapshot_of_a_run(directory))
    loads = []

    @SETTINGS
    @given(mutations(original), st.booleans())
    def check(change, compressed):
        with tempfile.TemporaryDirectory() as scratch:
            marker = os.path.join(scratch, 'pwned')
            data, arrays = mutate(original, change, marker, compressed)
            path = write(scratch, data, 'snapshot_iter_8')
            loads.append(check_snapshot_load(path, arrays, scratch))
            assert not os.path.exists(marker)

    check()
    assert any(loads) and not all(loads)
