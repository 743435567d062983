"""Batch jobs: label files and folders of images with a model file.

Without an output file the top-k classes of each image are printed. With it,
every image (files or folders, searched recursively) streams through
parallel loader processes to the model in batches, with a progress bar, and
one CSV row per image is written: ``path,label,probability,top_k,error``.
Unreadable images are reported in the ``error`` column and skipped.
"""
import csv
import os
import sys

import chainer
import numpy as np
from tqdm import tqdm

from finetune.common.allocator import keep_freed_memory
from finetune.common.errors import DataError
from finetune.common.errors import FinetuneError
from finetune.training.report import top_k
from finetune.common.fileio import atomic_write
from finetune.inference.predictor import load
from finetune.data.loader import make_iterator

IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.bmp', '.gif', '.tif', '.tiff',
                    '.webp', '.ppm', '.pgm')


def list_images(inputs):
    """Files named in ``inputs``; folders are searched recursively."""
    paths = []
    for item in inputs:
        if os.path.isdir(item):
            for root, dirs, files in os.walk(item):
                dirs[:] = sorted(d for d in dirs if not d.startswith('.'))
                paths += [os.path.join(root, f) for f in sorted(files)
                          if f.lower().endswith(IMAGE_EXTENSIONS)]
        elif os.path.exists(item):
            paths.append(item)
        else:
            raise DataError('%s: no such file or folder' % item)
    return paths


class ImagePathDataset(chainer.dataset.DatasetMixin):
    """Paths -> (input array, error message or '') for prediction."""

    def __init__(self, paths, preprocess):
        self.paths = paths
        self.preprocess = preprocess

    def __len__(self):
        return len(self.paths)

    def get_example(self, i):
        try:
            return self.preprocess(self.paths[i]), ''
        except (DataError, OSError, ValueError) as e:
            blank = np.zeros(self.preprocess.input_shape, np.float32)
            return blank, str(e)


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
    """Write ``rows`` from :func:`predict_paths` as CSV; returns counts."""
    done = failed = 0
    with atomic_write(path) as tmp, open(tmp, 'w', newline='') as f:
        writer = csv.writer(f)
        writer.writerow(['path', 'label', 'probability', 'top_%d' % k,
                         'error'])
        for image, probs, error in rows:
            if probs is None:
                writer.writerow([image, '', '', '', error])
                failed += 1
                continue
            best = int(probs.argmax())
            writer.writerow([image, names[best], '%.6f' % probs[best],
                             format_top_k(probs, names, k), ''])
            done += 1
    return done, failed


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
    predictor = load(model_path, device=device, backend=backend)
    paths = list_images(images)
    if not paths:
        raise DataError('no images found in %s' % ' '.join(images))
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
