"""Batch jobs: label files and folders of images with a model file.

Without an output file the top-k classes of each image are printed. With it,
every image (files or folders, searched recursively) streams through
parallel loader processes to the model in batches, with a progress bar, and
one CSV row per image is written: ``path,label,probability,top_k,error``.
Unreadable images are reported in the ``error`` column and skipped.
"""
import os
import sys

import numpy as np
from tqdm import tqdm

from finetune.common.errors import DataError
from finetune.common.errors import FinetuneError
from finetune.common.fileio import refuse_overwriting_inputs
from finetune.common.fileio import write_csv
from finetune.inference.predictor import load
from finetune.inference.predictor import top_k
from finetune.data.datasets import ImagePathDataset
from finetune.data.images import walk_files
from finetune.data.loader import make_iterator

def list_images(inputs):
    """Files named in ``inputs``; folders are searched recursively (as
    training scans them: symlinks followed, hidden files and other
    extensions left out)."""
    paths = []
    for item in inputs:
        if os.path.isdir(item):
            paths += walk_files(item)[0]
        elif os.path.exists(item):
            paths.append(item)
        else:
            raise DataError('%s: no such file or folder' % item)
    return paths


def predict_paths(predictor, paths, batch_size=64, loaderjob=2,
                  progress=True):
    """Yield ``(path, probs or None, error)`` for each path, in order."""
    dataset = ImagePathDataset(paths, predictor.preprocess)
    iterator = make_iterator(dataset, batch_size, loaderjob, repeat=False,
                             shuffle=False)
    bar = tqdm(total=len(paths), unit='img', disable=not progress,
               file=sys.stderr)
    index = 0
    try:
        for batch in iterator:
            arrays = np.stack([x for x, _ in batch])
            probs = predictor.probabilities(arrays)
            for (_, error), row in zip(batch, probs):
                yield paths[index], (None if error else row), error
                index += 1
            bar.update(len(batch))
    finally:
        iterator.finalize()
        bar.close()


def format_top_k(probs, names, k):
    """``'name:0.9123;name2:0.0500'`` for the k best classes."""
    best = top_k(probs[np.newaxis], k)[0]
    return ';'.join('%s:%.4f' % (names[i], probs[i]) for i in best)


def write_predictions(path, rows, names, k):
    """Write ``rows`` from :func:`predict_paths` as CSV; returns
    (labelled, skipped) counts."""
    failed = []

    def csv_rows():
        for image, probs, error in rows:
            if probs is None:
                failed.append(image)
                yield [image, '', '', '', error]
                continue
            best = int(probs.argmax())
            yield [image, names[best], '%.6f' % probs[best],
                   format_top_k(probs, names, k), '']
    total = write_csv(path, ['path', 'label', 'probability', 'top_%d' % k,
                             'error'], csv_rows())
    return total - len(failed), len(failed)


def print_predictions(rows, names, k, out=sys.stdout):
    """Print each image's k best classes with probabilities."""
    failed = 0
    for image, probs, error in rows:
        if probs is None:
            print('%s: skipped: %s' % (image, error), file=sys.stderr)
            failed += 1
            continue
        print(image, file=out)
        for i in top_k(probs[np.newaxis], k)[0]:
            print('  %.4f  %s' % (probs[i], names[i]), file=out)
    return failed


def label_images(model_path, images, out=None, batch_size=64, loaderjob=2,
                 top=5, device=-1, backend='auto'):
    """Label ``images`` (files or folders) with the model file
    ``model_path``: a CSV at ``out``, else the top classes on stdout.

    Returns:
        int: the exit status: 1 when every image was skipped, else 0.
    """
    if not model_path.endswith('.npz'):
        raise FinetuneError('%s: give the .npz model file (convert a '
                            'caffemodel with python -m finetune.convert)'
                            % model_path)
    paths = list_images(images)
    if not paths:
        raise DataError('no images found in %s' % ' '.join(images))
    if out:
        refuse_overwriting_inputs(out, [model_path] + paths, '--out')
    predictor = load(model_path, device=device, backend=backend)
    rows = predict_paths(predictor, paths, batch_size, loaderjob,
                         progress=bool(out))
    names = predictor.class_names
    if out:
        done, failed = write_predictions(out, rows, names, top)
        print('%d images labelled, %d skipped -> %s'
              % (done, failed, out), file=sys.stderr)
    else:
        failed = print_predictions(rows, names, top)
    return 1 if failed and failed == len(paths) else 0
