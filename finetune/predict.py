"""Classify images with a finetune model file.

    python -m finetune.predict --model pretrained/bvlc_alexnet.npz cat.jpg
    python -m finetune.predict --model result/model_best.npz photos/ \\
        --batch 256 --gpu 0 --out preds.csv

Without ``--out`` the top-k classes of each image are printed. With it,
every image (files or folders, searched recursively) streams through
parallel loader processes to the model in batches, with a progress bar, and
one CSV row per image is written: ``path,label,probability,top_k,error``.
Unreadable images are reported in the ``error`` column and skipped.
"""
import argparse
import csv
import os
import sys

import chainer
import numpy as np
from tqdm import tqdm

from finetune.common.allocator import keep_freed_memory
from finetune.common.cli import command
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
        print(image)
        for i in top_k(probs[np.newaxis], k)[0]:
            print('  %.4f  %s' % (probs[i], names[i]), file=out)
    return failed


@command
def main(argv=None):
    parser = argparse.ArgumentParser(
        prog='python -m finetune.predict', description=__doc__.split('\n')[0])
    parser.add_argument('images', nargs='+', help='image files or folders')
    parser.add_argument('--model', required=True,
                        help='.npz from finetune.train or finetune.convert')
    parser.add_argument('--gpu', type=int, default=-1,
                        help='GPU id (default: CPU)')
    parser.add_argument('--batch', type=int, default=64)
    parser.add_argument('--loaderjob', type=int, default=2,
                        help='image-loading processes (0: in this process)')
    parser.add_argument('--top', type=int, default=5)
    parser.add_argument('--backend', choices=['auto', 'opencv', 'chainer'],
                        default='auto', help="CPU engine: OpenCV's dnn "
                        "('auto' when installed; exact, faster) or Chainer")
    parser.add_argument('--out', help='write CSV predictions here')
    args = parser.parse_args(argv)
    keep_freed_memory()
    if not args.model.endswith('.npz'):
        raise FinetuneError('%s: give the .npz model file (convert a '
                            'caffemodel with python -m finetune.convert)'
                            % args.model)
    predictor = load(args.model, device=args.gpu, backend=args.backend)
    paths = list_images(args.images)
    if not paths:
        raise DataError('no images found in %s' % ' '.join(args.images))
    rows = predict_paths(predictor, paths, args.batch, args.loaderjob,
                         progress=bool(args.out))
    names = predictor.class_names
    if args.out:
        done, failed = write_predictions(args.out, rows, names, args.top)
        print('%d images labelled, %d skipped -> %s'
              % (done, failed, args.out), file=sys.stderr)
    else:
        failed = print_predictions(rows, names, args.top)
    return 1 if failed and failed == len(paths) else 0


if __name__ == '__main__':
    sys.exit(main())
