"""Trainer snapshots (``--resume``) read safely: never a pickle, never a
member that does not fit the trainer, never a state that resumes wrongly.

Chainer's ``serializers.load_npz`` reads with ``allow_pickle=True``, so a
crafted member would run code; here every snapshot is read through
:class:`~finetune.common.npz.NpzReader` (headers checked before any data,
no object arrays) in two steps:

* :func:`check_snapshot` (before ``--out`` is touched, no trainer needed):
  ``updater/iteration`` present; every integer scalar (iterations, epochs,
  ``t``, positions: all counts) >= 0, no float scalar NaN; every text
  member JSON of bounded nesting, of the type Chainer's extensions expect
  (``_log`` a list of objects, ``_names`` a list of strings, ``_plot_*``
  an object); each iterator's ``order`` a 1-D integer array and its
  ``current_position`` within it.
* :func:`load_snapshot` (the trainer built): :class:`SnapshotDeserializer`,
  Chainer's ``NpzDeserializer`` over that reader, compares each member
  with the trainer's value before reading it: the same shape (an array of
  another length is never broadcast in), a compatible dtype, a scalar for a
  scalar; optimizer state (momentum ``v``...) the shape of its parameter;
  an iterator ``order`` a permutation of the dataset; float arrays finite.

Every refusal is one :class:`CheckpointError` line: ``--resume FILE:
member NAME: what is wrong``.
"""
import chainer
import numpy as np

from finetune.common.errors import CheckpointError
from finetune.common.errors import one_line
from finetune.common.npz import NpzReader
from finetune.common.npz import parse_json
from finetune.common.npz import shown

ITERATION = 'updater/iteration'
ITERATOR = 'iterator:'
OPTIMIZER, MODEL = 'updater/optimizer:', 'updater/model:'
#: Text members of Chainer's extensions -> the JSON type they hold.
TEXT_TYPES = (('/_log', list), ('/_names', list), ('/_plot_', dict))


def open_snapshot(path):
    """An :class:`NpzReader` of the snapshot ``path`` (errors name
    ``--resume path``; float arrays must be finite)."""
    return NpzReader(path, label='--resume %s' % path, finite=True,
                     kind='snapshot')


def check_snapshot(path):
    """Refuse a file that is not a sound trainer snapshot, reading its
    headers and its scalar and text members only (see the module).

    Raises:
        CheckpointError: not a readable snapshot, a model file or another
            .npz (not a trainer snapshot), or a member that cannot be.
    """
    with open_snapshot(path) as npz:
        if ITERATION not in npz:
            hint = ' (a model file: pass it as --pretrained to fine-tune ' \
                'it further)' if '__meta__' in npz else ''
            raise CheckpointError('--resume %s: not a trainer snapshot%s'
                                  % (path, hint))
        for name in npz:
            header = npz.header(name)
            if header.dtype.kind == 'U':
                _check_text(npz, name)
            elif header.shape == ():
                _check_scalar(npz, name)
        _check_iterators(npz)


def _check_scalar(npz, name):
    value = npz[name][()]
    kind = npz.header(name).dtype.kind
    if kind in 'iu' and value < 0:
        raise npz.error(name, 'is %d; a count cannot be negative' % value)
    if kind == 'f' and np.isnan(value):
        raise npz.error(name, 'is NaN')


def _check_text(npz, name):
    value = parse_json(str(npz[name]), '%s: member %s' % (npz.label,
                                                         shown(name)))
    for part, kind in TEXT_TYPES:
        if part in name and not isinstance(value, kind):
            raise npz.error(name, 'is not a JSON %s' % (
                'list' if kind is list else 'object'))
    if name.endswith('/_log') and not all(isinstance(entry, dict)
                                          for entry in value):
        raise npz.error(name, 'is not a list of JSON objects')
    if name.endswith('/_names') and not all(isinstance(entry, str)
                                            for entry in value):
        raise npz.error(name, 'is not a list of names')


def _check_iterators(npz):
    for name in npz:
        if ITERATOR not in name or not name.endswith('/order'):
            continue
        header = npz.header(name)
        if len(header.shape) != 1 or header.dtype.kind not in 'iu':
            raise npz.error(name, '%s %s is not a 1-D integer order' % (
                header.dtype.str, header.shape))
        position = name[:-len('order')] + 'current_position'
        if position not in npz:
            continue
        if npz.header(position).shape != () or \
                npz.header(position).dtype.kind not in 'iu':
            raise npz.error(position, 'is not an integer position')
        if npz[position][()] > header.shape[0]:
            raise npz.error(position, 'is %d, past the %d examples of the '
                            'order' % (npz[position][()], header.shape[0]))


def load_snapshot(path, trainer):
    """Load the trainer snapshot ``path`` into ``trainer``, each member
    compared with what the trainer holds first (see the module).

    Raises:
        CheckpointError: a member that does not fit, or one the trainer
            needs that the snapshot lacks (one line naming it).
    """
    check_snapshot(path)
    with open_snapshot(path) as npz:
        try:
            SnapshotDeserializer(npz).load(trainer)
        except (KeyError, ValueError) as e:  # Chainer's: a missing member
            raise CheckpointError('--resume %s: does not fit this run (%s)'
                                  % (path, one_line(e)[:200])) from None


class SnapshotDeserializer(chainer.serializers.NpzDeserializer):
    """``NpzDeserializer`` over an :class:`NpzReader` that checks each
    member against the value it replaces before reading it."""

    def __getitem__(self, key):
        return SnapshotDeserializer(self.npz, self.path + key.strip('/') +
                                    '/', strict=self.strict,
                                    ignore_names=self.ignore_names)

    def __call__(self, key, value):
        name = self.path + key.lstrip('/')
        if name in self.npz:
            _check_fits(self.npz, name, value)
            if ITERATOR in name and name.endswith('/order'):
                _check_permutation(self.npz, name)
        return super().__call__(key, value)


def _check_fits(npz, name, value):
    """Member ``name`` can replace ``value`` (an array, a Python scalar,
    or None: optimizer state, shaped as its parameter)."""
    header = npz.header(name)
    if value is None:
        param = _parameter_of(name)
        if param not in npz:
            raise npz.error(name, 'optimizer state of no parameter in the '
                            'snapshot (%s)' % shown(str(param)))
        if npz.header(param).shape != header.shape or \
                header.dtype.kind != 'f':
            raise npz.error(name, '%s %s does not fit its parameter %s %s'
                            % (header.dtype.str, header.shape, shown(param),
                               npz.header(param).shape))
        return
    if isinstance(value, (bool, np.bool_)):
        shape, kinds = (), 'b'
    elif isinstance(value, (int, np.integer)):
        shape, kinds = (), 'iu'
    elif isinstance(value, (float, np.floating)):
        shape, kinds = (), 'fiu'
    elif isinstance(value, str):
        shape, kinds = (), 'U'
    else:
        shape = tuple(value.shape)
        kinds = {'f': 'f', 'i': 'iu', 'u': 'iu', 'b': 'b'}.get(
            value.dtype.kind, value.dtype.kind)
    if header.shape != shape or header.dtype.kind not in kinds:
        raise npz.error(name, '%s %s does not fit this run (%s %s)' % (
            header.dtype.str, header.shape,
            getattr(value, 'dtype', type(value).__name__), shape))


def _parameter_of(name):
    """``updater/optimizer:main/net/fc8/W/v`` -> its parameter's member
    ``updater/model:main/net/fc8/W``."""
    if not name.startswith(OPTIMIZER):
        return None
    return MODEL + name[len(OPTIMIZER):].rsplit('/', 1)[0]


def _check_permutation(npz, name):
    order = npz[name]
    if not np.array_equal(np.sort(order), np.arange(len(order))):
        raise npz.error(name, 'is not a permutation of the %d examples'
                        % len(order))
