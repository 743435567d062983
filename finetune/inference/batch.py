"""Batch jobs: label files and folders of images with a model file.

Without an output file the top-k classes of each image are printed. With it,
every image (files or folders, searched recursively) streams through
parallel loader processes to the model in batches, with a progress bar, and
one CSV row per image is written: ``path,label,probability,top_k,error``.
Unreadable images are reported in the ``error`` column and skipped.

**Batch jobs.** Rows are made durable in chunks (a journal beside the CSV,
see :mod:`finetune.inference.journal`): the same command after a kill
keeps them and labels only the rest, and the final CSV is byte-identical to
an uninterrupted run's. Under ``mpiexec -n N`` the batches are dealt to the
ranks (each with its own loader and device) and rank 0 writes every chunk
in input order: the same bytes as one process. Batch ``b`` is always the
images ``[start + b*B, start + (b+1)*B)``, so every image is computed in the
same batch whatever the number of ranks. ``features=LAYER`` also writes
each image's activations at that layer to a float32 ``.npy`` (one row per
CSV row; NaN for skipped images).
"""
import contextlib
import hashlib
import math
import os
import stat
import sys

import numpy as np
from numpy.lib import format as npy_format
from tqdm import tqdm

from finetune.common.errors import DataError
from finetune.common.errors import FinetuneError
from finetune.common.fileio import atomic_write
from finetune.common.fileio import naming_write_errors
from finetune.common.fileio import printable
from finetune.common.fileio import refuse_overwriting_inputs
from finetune.common.fileio import sha1_of_file
from finetune.inference.journal import Journal
from finetune.inference.journal import csv_text
from finetune.inference.journal import remove_stale_temporaries
from finetune.inference.predictor import check_batch_size
from finetune.inference.predictor import load
from finetune.inference.predictor import top_k
from finetune.data.datasets import ImagePathDataset
from finetune.data.images import walk_files
from finetune.training.distributed import rank_device
from finetune.training.distributed import ranks_for_job
from finetune.data.loader import make_iterator

def list_images(inputs):
    """Files named in ``inputs``; folders are searched recursively (as
    training scans them: symlinks followed, hidden files and other
    extensions left out)."""
    paths = []
    for item in map(os.fspath, inputs):
        if os.path.isdir(item):
            # FIFOs, sockets and devices would block or never end: only
            # regular files (as training's scan reads them)
            paths += [p for p in walk_files(item)[0] if os.path.isfile(p)]
        elif os.path.isfile(item):
            paths.append(item)
        elif os.path.exists(item):
            raise DataError('%s: not a regular file (%s)' % (
                printable(item), _file_kind(item)))
        else:
            raise DataError('%s: no such file or folder' % printable(item))
    return paths


def _file_kind(path):
    mode = os.stat(path).st_mode
    return ('a FIFO' if stat.S_ISFIFO(mode) else 'a socket'
            if stat.S_ISSOCK(mode) else 'a device')


def predict_batches(predictor, paths, batch_size=64, loaderjob=2,
                    layer=None):
    """Yield ``(probs, features, errors)`` per batch of ``paths`` in order:
    float32 (n, n_classes) probabilities, float32 (n, ...) activations at
    ``layer`` (None without one) and the n error messages ('' for the
    images that were read). Close it (``contextlib.closing``) to stop the
    loader processes at once."""
    dataset = ImagePathDataset(paths, predictor.transform)
    iterator = make_iterator(dataset, batch_size, loaderjob, repeat=False,
                             shuffle=False)
    try:
        for batch in iterator:
            arrays = np.stack([x for x, _ in batch])
            probs, features = predictor.outputs(arrays, layer)
            yield probs, features, [error for _, error in batch]
    finally:
        iterator.finalize()


def predict_paths(predictor, paths, batch_size=64, loaderjob=2,
                  progress=True):
    """Yield ``(path, probs or None, error)`` for each path, in order."""
    check_batch_size(batch_size)
    bar = tqdm(total=len(paths), unit='img', disable=not progress,
               file=sys.stderr)
    index = 0
    with bar, contextlib.closing(predict_batches(
            predictor, paths, batch_size, loaderjob)) as batches:
        for probs, _, errors in batches:
            for row, error in zip(probs, errors):
                yield paths[index], (None if error else row), error
                index += 1
            bar.update(len(errors))


def format_top_k(probs, names, k):
    """``'name:0.9123;name2:0.0500'`` for the k best classes."""
    best = top_k(probs[np.newaxis], k)[0]
    return ';'.join('%s:%.4f' % (names[i], probs[i]) for i in best)


def csv_header(k):
    """The columns of a predictions CSV."""
    return ['path', 'label', 'probability', 'top_%d' % k, 'error']


def prediction_row(path, probs, error, names, k):
    """The CSV cells of one image (``probs`` None when it was skipped)."""
    if probs is None:
        return [path, '', '', '', error]
    best = int(probs.argmax())
    return [path, names[best], '%.6f' % probs[best],
            format_top_k(probs, names, k), '']


def print_predictions(rows, names, k, out=sys.stdout):
    """Print each image's k best classes with probabilities."""
    failed = 0
    for image, probs, error in rows:
        if probs is None:
            print('%s: skipped: %s' % (printable(image), printable(error)),
                  file=sys.stderr)
            failed += 1
            continue
        print(printable(image), file=out)
        for i in top_k(probs[np.newaxis], k)[0]:
            print('  %.4f  %s' % (probs[i], names[i]), file=out)
    return failed


def features_path(out):
    """Where ``features=`` activations go: ``out`` with ``.npy`` for its
    extension (``preds.csv`` -> ``preds.npy``)."""
    return os.path.splitext(out)[0] + '.npy'


def job_identity(model_path, paths, top, predictor, layer):
    """What the rows of a job depend on (see :class:`Journal`)."""
    listed = hashlib.sha1(b'\0'.join(
        os.fsencode(p) for p in paths)).hexdigest()
    return {'model': 'sha1 %s' % sha1_of_file(model_path),
            'images': '%d files (sha1 of the list %s)' % (len(paths),
                                                          listed[:16]),
            'top': top, 'backend': predictor.engine,
            'test_time_augmentation': '10 crops' if predictor.tta else 'none',
            'features': layer or 'none'}


def check_options(batch_size, loaderjob, top, chunk_rows):
    """Refuse option values no job can run with (one line each)."""
    check_batch_size(batch_size)
    for name, value, least in (('loaderjob', loaderjob, 0), ('top', top, 1),
                               ('chunk_rows', chunk_rows, 1)):
        if isinstance(value, bool) or not isinstance(
                value, (int, np.integer)) or value < least:
            raise FinetuneError('%s: expected an integer >= %d, got %r'
                                % (name, least, value))


class FeatureFile:
    """The float32 ``.npy`` of a job's activations, filled at a temporary
    name (``.<name>.partial.npy``) through a memory map and renamed onto
    ``path`` by :meth:`finish`.

    Args:
        path (str): the final file.
        shape (tuple): (n_images, ...) of the whole array.
        keep (bool): reuse the temporary file of an interrupted run.
    """

    def __init__(self, path, shape, keep):
        self.path = path
        directory, name = os.path.split(path)  # errors name it as given
        self.partial = os.path.join(directory, '.%s.partial.npy' % name)
        self.shape = tuple(shape)
        self.array = self._reopened() if keep else None
        self.reused = self.array is not None
        if self.array is None:
            with naming_write_errors(path):
                self.array = npy_format.open_memmap(
                    self.partial, 'w+', np.float32, self.shape)
                with open(self.partial, 'r+b') as f:  # ENOSPC now, not
                    size = os.fstat(f.fileno()).st_size  # a SIGBUS later
                    os.posix_fallocate(f.fileno(), 0, size)

    def _reopened(self):
        try:
            array = npy_format.open_memmap(self.partial, 'r+')
        except (OSError, ValueError):
            return None
        if array.dtype != np.float32 or array.shape != self.shape:
            return None
        return array

    def write(self, start, rows):
        """Store ``rows`` (n, ...) at ``start`` and make them durable."""
        self.array[start:start + len(rows)] = rows
        with naming_write_errors(self.path):
            self.array.flush()

    def finish(self):
        """Rename the filled file onto :attr:`path` (fsynced first)."""
        self.array.flush()
        del self.array
        with naming_write_errors(self.path):
            with open(self.partial, 'rb') as f:
                os.fsync(f.fileno())
            os.replace(self.partial, self.path)


def finished_features(path, shape):
    """True when ``path`` holds a float32 array of ``shape`` (the run that
    filled it was killed after renaming it, before its journal was
    removed)."""
    try:
        array = npy_format.open_memmap(path, 'r')
    except (OSError, ValueError):
        return False
    return array.dtype == np.float32 and array.shape == tuple(shape)


def batch_plan(start, total, batch_size, chunk_rows, size):
    """The batches of images ``[start, total)``: a list of chunks, each a
    list of ``(first, stop)`` image ranges; a chunk holds a multiple of
    ``size`` batches (about ``chunk_rows`` images) and batch j of a chunk
    goes to rank ``j % size``."""
    per_chunk = max(1, math.ceil(chunk_rows / batch_size))
    per_chunk = math.ceil(per_chunk / size) * size
    batches = [(first, min(total, first + batch_size))
               for first in range(start, total, batch_size)]
    return [batches[i:i + per_chunk]
            for i in range(0, len(batches), per_chunk)]


class Job:
    """Rank 0's side of one labelling job: journal, feature file, bar."""

    def __init__(self, out, paths, identity, names, top, layer_shape,
                 resume):
        self.out = out
        self.paths = paths
        self.names = names
        self.top = top
        self.journal = Journal(out, identity, paths, require=resume)
        try:
            remove_stale_temporaries(out)
            self.features = None
            self.features_done = False
            if layer_shape is not None:
                self._open_features(layer_shape)
        except BaseException:
            self.journal.close()
            raise

    def _open_features(self, layer_shape):
        path = features_path(self.out)
        remove_stale_temporaries(path)
        shape = (len(self.paths),) + tuple(layer_shape)
        if self.journal.rows == len(self.paths) and finished_features(
                path, shape):
            self.features_done = True
            return
        self.features = FeatureFile(path, shape, keep=self.journal.rows > 0)
        if self.journal.resumed and not self.features.reused:
            print('%s: the partial features file is gone; labelling all '
                  'images again' % printable(path), file=sys.stderr)
            self.journal.restart()

    def write_chunk(self, pieces):
        """Write the gathered ``(first, rows, features)`` batches of one
        chunk, in order."""
        rows = []
        for first, batch_rows, features in sorted(pieces, key=lambda p:
                                                  p[0]):
            if self.features is not None:
                self.features.write(first, features)
            rows += batch_rows
        self.journal.append(rows)

    def finish(self):
        """Write the CSV (and rename the features) from the journal."""
        with atomic_write(self.out, suffix='.csv') as tmp:
            with open(tmp, 'wb') as f:
                f.write(csv_text([csv_header(self.top)]).encode('utf-8'))
                for chunk in self.journal.chunks():
                    f.write(chunk)
        if self.features is not None:
            self.features.finish()
        self.journal.close(remove=True)


def label_batches(predictor, paths, chunk, rank, batch_size, loaderjob,
                  names, top, layer):
    """This rank's ``(first, rows, features)`` of each batch in ``chunk``
    whose turn is its own (see :func:`batch_plan`), per chunk."""
    mine = [[b for j, b in enumerate(batches) if j % chunk.size == rank]
            for batches in chunk.plan]
    own = [paths[i] for batches in mine for first, stop in batches
           for i in range(first, stop)]
    with contextlib.closing(predict_batches(
            predictor, own, batch_size, loaderjob, layer)) as outputs:
        for batches in mine:
            pieces = []
            for first, stop in batches:
                probs, features, errors = next(outputs)
                rows = [prediction_row(paths[first + i], None if error
                                       else probs[i], error, names, top)
                        for i, error in enumerate(errors)]
                if features is not None:
                    features[[bool(e) for e in errors]] = np.nan
                pieces.append((first, rows, features))
            yield pieces


class _Plan:
    def __init__(self, plan, size):
        self.plan = plan
        self.size = size


def label_images(model_path, images, out=None, batch_size=64, loaderjob=2,
                 top=5, device=-1, backend='auto', features=None,
                 resume=False, chunk_rows=1024, ranks=None, tta=False):
    """Label ``images`` (files or folders) with the model file
    ``model_path``: a CSV at ``out``, else the top classes on stdout.

    Args:
        features (str): also write each image's activations at this layer
            (a name of ``Predictor.feature_layers()``) to
            :func:`features_path` of ``out``.
        resume (bool): refuse to start when ``out`` has no partial run
            (without it, a partial run of the same job is continued and a
            fresh one started when there is none).
        chunk_rows (int): images made durable at a time.
        ranks: SingleProcess or MultiNode (default: the MPI job this
            process is part of, if any).
        tta (bool): Caffe's 10-crop test-time augmentation (the mean
            probabilities of each image's corner and centre crops and their
            mirrors; ten forward passes per image).

    Returns:
        int: the exit status: 1 when every image was skipped, else 0.

    Raises:
        FinetuneError: bad input (one line naming the file or option);
            under MPI, rank 0 raises it and the other ranks exit with
            status 2.
    """
    check_options(batch_size, loaderjob, top, chunk_rows)
    ranks = ranks or ranks_for_job()
    if not out and (features or resume or ranks.size > 1):
        raise FinetuneError('%s needs --out (the CSV to write)' % (
            '--features' if features else '--resume' if resume
            else 'mpiexec'))
    if features and tta:
        raise FinetuneError('--features and --tta: activations are written '
                            'per image, not per crop; drop one of them')
    if not str(model_path).endswith('.npz'):
        raise FinetuneError('%s: give the .npz model file (convert a '
                            'caffemodel with python -m finetune.convert)'
                            % model_path)
    if not out:
        return _print_labels(model_path, images, batch_size, loaderjob, top,
                             device, backend, tta)
    job = None
    if ranks.is_root:
        job = ranks.root_result(lambda: _start_job(
            model_path, images, out, top, device, backend, features, resume,
            ranks, tta))
    else:
        ranks.root_result(None)
    try:
        return _run_job(job, model_path, out, batch_size, loaderjob, top,
                        device, backend, features, chunk_rows, ranks, tta)
    finally:
        if job is not None and not job.journal.file.closed:
            job.journal.close()


def _start_job(model_path, images, out, top, device, backend, layer,
               resume, ranks, tta):
    paths = list_images(images)
    if not paths:
        raise DataError('no images found in %s' % ' '.join(
            printable(os.fspath(i)) for i in images))
    inputs = [model_path] + paths
    refuse_overwriting_inputs(out, inputs, '--out')
    if os.path.isdir(out):
        raise FinetuneError('--out %s: is a folder; name the CSV file to '
                            'write' % printable(out))
    if layer:
        if os.path.abspath(features_path(out)) == os.path.abspath(out):
            raise FinetuneError('--out %s: --features writes %s; give the '
                                'CSV another extension (.csv)'
                                % (printable(out), printable(out)))
        refuse_overwriting_inputs(features_path(out), inputs, '--features')
    predictor = load(model_path, device=rank_device(device, ranks),
                     backend=backend, tta=tta)
    shape = None
    if layer:
        predictor.feature_cut(layer)
        shape = predictor.feature_shape(layer)
    job = Job(out, paths, job_identity(model_path, paths, top, predictor,
                                       layer),
              predictor.class_names, top, shape, resume)
    job.predictor = predictor
    return job


def _run_job(job, model_path, out, batch_size, loaderjob, top, device,
             backend, layer, chunk_rows, ranks, tta):
    paths, start = ranks.bcast((job.paths, job.journal.rows) if job
                               else None)
    predictor = job.predictor if job else load(
        model_path, device=rank_device(device, ranks), backend=backend,
        tta=tta)
    plan = _Plan(batch_plan(start, len(paths), batch_size, chunk_rows,
                            ranks.size), ranks.size)
    if job and job.journal.resumed:
        print('%s: resuming: %d of %d images already labelled' % (
            printable(out), start, len(paths)), file=sys.stderr)
    bar = tqdm(total=len(paths), initial=start, unit='img', file=sys.stderr,
               disable=not ranks.is_root)
    with bar, contextlib.closing(label_batches(
            predictor, paths, plan, ranks.rank, batch_size, loaderjob,
            predictor.class_names, top, layer)) as chunks:
        for pieces in chunks:
            gathered = ranks.gather(pieces)
            if job:
                job.write_chunk([p for rank in gathered for p in rank])
                bar.update(sum(len(rows) for rank in gathered
                               for _, rows, _ in rank))
    if not job:
        return 0
    job.finish()
    skipped = job.journal.skipped
    print('%d images labelled, %d skipped -> %s%s' % (
        len(paths) - skipped, skipped, printable(out),
        ' (features: %s)' % printable(features_path(out)) if layer else ''),
        file=sys.stderr)
    return 1 if skipped == len(paths) else 0


def _print_labels(model_path, images, batch_size, loaderjob, top, device,
                  backend, tta):
    paths = list_images(images)
    if not paths:
        raise DataError('no images found in %s' % ' '.join(
            printable(os.fspath(i)) for i in images))
    predictor = load(model_path, device=device, backend=backend, tta=tta)
    failed = print_predictions(
        predict_paths(predictor, paths, batch_size, loaderjob,
                      progress=False), predictor.class_names, top)
    return 1 if failed and failed == len(paths) else 0
