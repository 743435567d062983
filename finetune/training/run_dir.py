"""The output folder of a run: one run at a time, and only its own snapshots.

A run's identity (what its snapshots are snapshots *of*: the data, the
pretrained net, the surgery and the preprocessing) is written to
``<out>/run.json`` when the run starts. ``--resume`` with a different
identity is refused, naming what differs; a new run into a folder that
holds another run's snapshots is refused unless ``--resume auto``, a new
``--out`` or ``--overwrite`` says what to do. ``<out>/.lock`` is held
(``fcntl.flock``) while a run uses the folder, so a second run on the same
``--out`` stops at once, naming the first one's process.
"""
import contextlib
import fcntl
import json
import os

from finetune.common.errors import FinetuneError
from finetune.common.fileio import atomic_write
from finetune.data import folder
from finetune.training.config import option_flag
from finetune.training.extensions import SNAPSHOT_PREFIX
from finetune.training.extensions import latest_snapshot
from finetune.training.snapshot import check_snapshot

IDENTITY_FILE = 'run.json'
LOCK_FILE = '.lock'

#: TrainConfig fields that make a run what it is (changing any of them
#: makes the snapshots another run's); schedule, loading, device and
#: output options may change between a run and its resumption.
IDENTITY_FIELDS = ('image_list', 'val_split', 'mean', 'pretrained',
                   'prototxt', 'freeze', 'replace', 'seed', 'dtype')


@contextlib.contextmanager
def exclusive_run(out):
    """Hold ``<out>/.lock`` for the run (created with ``out``).

    Raises:
        FinetuneError: another process holds it (the message names it).
    """
    os.makedirs(out, exist_ok=True)
    path = os.path.join(out, LOCK_FILE)
    with open(path, 'a+') as f:
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or 'another process'
            raise FinetuneError('--out %s: a training run is already using '
                                'this folder (%s); wait for it or choose '
                                'another --out' % (out, holder)) from None
        f.seek(0)
        f.truncate()
        f.write('pid %d' % os.getpid())
        f.flush()
        try:
            yield
        finally:
            f.seek(0)
            f.truncate()
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def run_identity(config):
    """The JSON-serializable identity of the run ``config`` describes."""
    identity = {name: getattr(config, name) for name in IDENTITY_FIELDS}
    identity['data'] = os.path.abspath(config.data)
    return identity


def _snapshots(out):
    return sorted(name for name in os.listdir(out)
                  if name.startswith(SNAPSHOT_PREFIX)) \
        if os.path.isdir(out) else []


def check_run_dir(output, identity):
    """Refuse a run that ``--out`` does not allow, reading only: a fresh
    run into another run's snapshots, a ``--resume`` of no trainer snapshot
    or of a run with another identity. :func:`finetune.fit` calls it before
    it takes the lock, so a refused run leaves ``--out`` as it was (and
    does not create it); :func:`prepare_run_dir` checks again, locked.

    Args:
        output (OutputOptions): ``--out``, ``--resume`` and ``--overwrite``
            (``config.output``).
        identity (dict): the run's :func:`run_identity`.

    Raises:
        FinetuneError: naming what differs and what to do.
    """
    stored = _stored_identity(output.out)
    if output.resume:
        resume_snapshot(output.resume, output.out)  # before any scan
        source = os.path.dirname(os.path.abspath(output.resume)) \
            if output.resume != 'auto' else output.out
        if source != os.path.abspath(output.out):
            stored = _stored_identity(source) or stored
        differs = sorted(key for key in identity if stored is not None and
                         stored.get(key) != identity[key])
        if differs:
            raise FinetuneError(
                '--resume: the snapshots are of another run (%s differ: '
                '%s); resume with the same options or start anew with '
                'another --out (or --overwrite)' % (', '.join(
                    option_flag(k) for k in differs), '; '.join(
                    '%s was %r, now %r' % (option_flag(k), stored.get(k),
                                           identity[k]) for k in differs)))
    elif _snapshots(output.out) and not output.overwrite:
        raise FinetuneError(
            '--out %s holds snapshots of an earlier run; continue it '
            'with --resume auto, or choose another --out, or pass '
            '--overwrite to replace it' % output.out)


def prepare_run_dir(output, identity):
    """Check ``--out`` against ``--resume``/``--overwrite`` (see
    :func:`check_run_dir`) and write the run's ``identity``; with
    ``--overwrite``, remove the earlier run's snapshots. Call with the
    folder locked.

    Raises:
        FinetuneError: a fresh run into another run's snapshots, or a
            resumption whose identity differs (both name what to do).
    """
    check_run_dir(output, identity)
    if not output.resume:
        for name in _snapshots(output.out):
            os.remove(os.path.join(output.out, name))
    with atomic_write(os.path.join(output.out, IDENTITY_FILE)) as tmp:
        with open(tmp, 'w', encoding='utf-8') as f:
            json.dump(identity, f, indent=1, sort_keys=True)


def _stored_identity(directory):
    try:
        with open(os.path.join(directory, IDENTITY_FILE),
                  encoding='utf-8') as f:
            stored = json.load(f)
    except (OSError, ValueError):
        return None
    if isinstance(stored, dict) and 'label_file' in stored:
        # runs before --image-list was its name
        stored.setdefault('image_list', stored.pop('label_file'))
    return stored


def resume_snapshot(resume, out):
    """The snapshot file ``--resume`` names (``auto``: the latest in
    ``out``, or None for a fresh start), checked to be a trainer snapshot.

    Raises:
        CheckpointError: not a readable trainer snapshot (a model file, a
            text file, a truncated file) or one that cannot be sound: a
            pickle, an impossible member (see
            :func:`finetune.training.snapshot.check_snapshot`).
    """
    path = latest_snapshot(out) if resume == 'auto' else resume
    if path is None:
        return None
    check_snapshot(path)
    return path


def resumes_from_lists(out, resume):
    """Whether the run reads its lists from ``out`` (a ``--resume`` of a
    run that wrote them) rather than scanning ``--data``."""
    return bool(resume) and os.path.exists(
        os.path.join(out, folder.TRAIN_FILE))


def check_data(dataset, out, resume):
    """Refuse a missing, empty or one-class ``--data`` folder (or a bad
    ``--image-list``) of ``dataset`` (a
    :class:`~finetune.training.config.DatasetOptions`, e.g.
    ``config.dataset``) that the run would scan, before ``out`` is
    touched (listing the folder twice costs little next to verifying every
    image)."""
    if not resumes_from_lists(out, resume):
        folder.list_dataset(dataset.data, dataset.image_list,
                            {'--out': out})


def prepare_lists(dataset, channels, size, *, out, resume, seed, jobs):
    """(train, val, class_names, mean): the lists in ``out`` when
    resuming, else built from ``dataset`` (a
    :class:`~finetune.training.config.DatasetOptions`) and written to
    ``out``: split by ``seed``, images checked by ``jobs`` processes at
    the pretrained net's ``channels`` and ``size``."""
    train_txt = os.path.join(out, folder.TRAIN_FILE)
    if resumes_from_lists(out, resume):
        train, names = folder.read_image_list(train_txt, dataset.data)
        val, _ = folder.read_image_list(
            os.path.join(out, folder.VAL_FILE), dataset.data,
            allow_empty=True)
        mean_path = os.path.join(out, folder.MEAN_FILE)
        mean = folder.load_mean(mean_path) if os.path.exists(
            mean_path) else None
        return train, val, names, mean
    prepared = folder.prepare_dataset(
        dataset.data, out, val_split=dataset.val_split, seed=seed,
        image_list=dataset.image_list,
        compute_mean=dataset.mean == 'dataset', channels=channels,
        size=size, jobs=max(1, jobs))
    return prepared.train, prepared.val, prepared.class_names, prepared.mean
