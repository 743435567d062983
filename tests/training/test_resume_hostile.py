"""Crafted trainer snapshots (issue 20) given to ``python -m finetune.train
--resume``: a pickle is never loaded, and a snapshot that would make the
resumed run silently wrong (or end in a traceback) is refused in one line
naming the file and the member, with exit status 2. The snapshots are
made from a real run: LeNet on the digits, ``-j 0`` (SerialIterator) and
``-j 2`` (MultiprocessIterator)."""
import os
import shutil

import numpy as np
import pytest

from tests.support.processes import run_module
from tests.support.processes import RunsCommand
from tests.support.processes import folder_state
from tests.support.processes import one_error_line

MODEL = 'updater/model:main/predictor/net/'
OPTIMIZER = 'updater/optimizer:main/predictor/net/'
ORDER = 'updater/iterator:main/order'


def train(data, pretrained, out, *extra):
    return run_module('finetune.train', '--data', data, '--pretrained',
                      pretrained, '-o', str(out), '--replace', 'ip2',
                      '--freeze', 'conv1', '-B', '16', '-j', '0',
                      '--log-interval', '0', *extra)


@pytest.fixture(scope='module')
def finished_run(digits, tmp_path_factory):
    """(the --out of a 1-epoch run, the path of its snapshot)."""
    data, pretrained = digits
    out = tmp_path_factory.mktemp('run') / 'out'
    result = train(data, pretrained, out, '-E', '1')
    assert result.returncode == 0, result.stderr[-2000:]
    snapshots = [name for name in os.listdir(out)
                 if name.startswith('snapshot_iter_')]
    assert len(snapshots) == 1
    return out, snapshots[0]


def members(path):
    with np.load(path, allow_pickle=False) as npz:
        return {name: npz[name] for name in npz.files}


def crafted_run(finished_run, tmp_path, change):
    """A copy of the finished run whose snapshot is ``change``d (a
    function of its {member: array} dict, in place)."""
    out, snapshot = finished_run
    copy = tmp_path / 'out'
    shutil.copytree(out, copy)
    arrays = members(str(copy / snapshot))
    change(arrays)
    with open(copy / snapshot, 'wb') as f:
        np.savez(f, **arrays)
    return copy, str(copy / snapshot)


def pickle_in(name, marker):
    def change(arrays):
        arrays[name] = np.empty((), dtype=object)
        arrays[name][()] = RunsCommand(marker)
    return change


def test_a_pickle_in_the_snapshot_never_runs(digits, finished_run,
                                             tmp_path):
    """--resume auto and --resume FILE: exit 2 naming the file and member,
    the marker the pickle would write absent, --out unchanged."""
    data, pretrained = digits
    marker = str(tmp_path / 'pwned')
    out, snapshot = crafted_run(finished_run, tmp_path,
                                pickle_in('updater/iteration', marker))
    before = folder_state(out)
    line = one_error_line(train(data, pretrained, out, '-E', '2', '-r',
                                'auto'))
    assert line == ('error: --resume %s: member updater/iteration: holds '
                    'Python objects (a pickle), which are never loaded'
                    % snapshot)
    assert not os.path.exists(marker)
    assert folder_state(out) == before
    fresh = tmp_path / 'fresh'
    line = one_error_line(train(data, pretrained, fresh, '-E', '2', '-r',
                                snapshot))
    assert snapshot in line and 'member updater/iteration' in line
    assert not os.path.exists(marker)
    assert not fresh.exists()
    assert folder_state(out) == before


def set_member(name, value):
    return lambda arrays: arrays.__setitem__(name, np.asarray(value))


def scale_member(name, factor):
    def change(arrays):
        arrays[name] = arrays[name] * np.float32(factor)
    return change


def first_order_entry(arrays):
    arrays[ORDER] = arrays[ORDER][:1]


def repeated_order(arrays):
    arrays[ORDER] = np.zeros_like(arrays[ORDER])


def longer_order(arrays):
    arrays[ORDER] = np.arange(len(arrays[ORDER]) + 7)


def momentum_of_one_value(arrays):
    arrays[OPTIMIZER + 'ip1/W/v'] = np.zeros(1, np.float32)


def no_member(name):
    return lambda arrays: arrays.pop(name)


def log_text(text):
    return set_member('extensions/LogReport/_log', text)


# (change, what the one line says after "--resume FILE: ")
CASES = {
    'negative iteration': (set_member('updater/iteration', -5),
                           'member updater/iteration: is -5; a count cannot '
                           'be negative'),
    'iteration an array': (set_member('updater/iteration', [9, 9, 9]),
                           'member updater/iteration: <i8 (3,) does not fit '
                           'this run'),
    'iteration a float': (set_member('updater/iteration', 9.5),
                          'member updater/iteration: <f8 () does not fit'),
    'negative epoch': (set_member('updater/iterator:main/epoch', -1),
                       'member updater/iterator:main/epoch: is -1'),
    'an order of one entry': (first_order_entry,
                              'member updater/iterator:main/current_position:'
                              ' is 15, past the 1 examples of the order'),
    'an order that repeats': (repeated_order, 'member %s: is not a '
                              'permutation of the 129 examples' % ORDER),
    'a longer order': (longer_order, 'member %s: <i8 (136,) does not fit'
                       % ORDER),
    'momentum of one value': (momentum_of_one_value,
                              'member %sip1/W/v: <f4 (1,) does not fit its '
                              'parameter %sip1/W (500, 800)'
                              % (OPTIMIZER, MODEL)),
    'NaN weights': (scale_member(MODEL + 'ip2/W', 'nan'),
                    'member %sip2/W: holds NaN or infinite values' % MODEL),
    'weights of another shape': (set_member(MODEL + 'ip2/b',
                                            np.zeros(11, np.float32)),
                                 'member %sip2/b/v: <f4 (10,) does not fit '
                                 'its parameter %sip2/b (11,)'
                                 % (OPTIMIZER, MODEL)),
    'frozen weights of another shape': (set_member(
        MODEL + 'conv1/b', np.zeros(21, np.float32)),
        'member %sconv1/b: <f4 (21,) does not fit this run' % MODEL),
    'a missing weight': (no_member(MODEL + 'ip1/W'),
                         'member %sip1/W/v: optimizer state of no parameter'
                         % OPTIMIZER),
    'a log nested 100,000 deep': (log_text('[' * 100000 + ']' * 100000),
                                  'member extensions/LogReport/_log: JSON '
                                  'nested 100000 deep'),
    'a log that is a number': (log_text('5'), 'member extensions/LogReport/'
                               '_log: is not a JSON list'),
    'a log that is not JSON': (log_text('[{"a": '), 'not JSON'),
    'a structured member': (set_member('updater/iteration', np.zeros(
        (), [('a', '<i8')])), 'member updater/iteration: dtype'),
}


def error_line(result):
    """The last line of a run that stopped with exit status 2 and no
    traceback (after the lines a resumed run prints: cached features,
    "resuming from")."""
    assert result.returncode == 2, result.stderr[-2000:]
    assert 'Traceback' not in result.stderr, result.stderr[-2000:]
    return result.stderr.strip().splitlines()[-1]


@pytest.mark.parametrize('case', sorted(CASES))
def test_a_snapshot_that_cannot_resume_soundly_is_one_line(
        digits, finished_run, tmp_path, case):
    data, pretrained = digits
    change, expected = CASES[case]
    out, snapshot = crafted_run(finished_run, tmp_path, change)
    line = error_line(train(data, pretrained, out, '-E', '2', '-r', 'auto'))
    assert line.startswith('error: --resume %s: ' % snapshot), line
    assert expected in line, line
    assert not (out / 'snapshot_iter_18').exists()


@pytest.mark.parametrize('case', ['an order that repeats', 'a longer order'])
def test_the_multiprocess_iterator_state_is_checked_too(
        digits, finished_run, tmp_path, case):
    """``-j 2``: MultiprocessIterator copies the order into its own array
    (a one-entry order would be broadcast over it)."""
    data, pretrained = digits
    change, expected = CASES[case]
    out, snapshot = crafted_run(finished_run, tmp_path, change)
    line = error_line(train(data, pretrained, out, '-E', '2', '-r', 'auto',
                            '-j', '2'))
    assert line.startswith('error: --resume %s: ' % snapshot), line
    assert expected in line, line


def test_a_fifo_given_as_the_snapshot_is_refused_without_blocking(
        digits, tmp_path):
    """Opening a FIFO for reading waits for a writer: numpy.load(FIFO)
    hung; the reader refuses anything but a regular file."""
    data, pretrained = digits
    fifo = tmp_path / 'snapshot_iter_5'
    os.mkfifo(fifo)
    out = tmp_path / 'out'
    result = run_module('finetune.train', '--data', data, '--pretrained',
                        pretrained, '-o', str(out), '-r', str(fifo),
                        timeout=120)
    assert one_error_line(result) == (
        'error: --resume %s: not a readable snapshot (not a regular file)'
        % fifo)
    assert not out.exists()
