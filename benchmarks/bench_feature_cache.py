"""Frozen-trunk feature cache: head-only epochs vs recomputing the trunk.

Builds a 3-class image folder from the real photos in tests/data (random
crops, scales, flips and color shifts of each photo), writes a
random-weights BVLC AlexNet caffemodel (conv1 scaled so activations stay
near 1), then trains ``--freeze conv1-conv5 --replace fc6-fc8`` twice on
the same data and seed: recomputing the trunk every step (on Chainer, and on
the default OpenCV path), and with ``--cache-features``. Prints seconds per epoch for both (median over epochs
2..E, so start-up and the cache build are excluded and reported apart),
their ratio, and both validation accuracies.

    .venv/bin/python benchmarks/bench_feature_cache.py [--per-class 40] [--epochs 4]
    .venv/bin/python benchmarks/bench_feature_cache.py --freeze conv1-fc7 --replace fc8
"""
import argparse
import json
import os
import shutil
import sys
import tempfile
import time

import numpy as np
from PIL import Image

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(ROOT, 'examples'))


def write_photo_classes(out_dir, per_class, seed=0):
    """``out_dir/<photo>/<n>.jpg``: jittered views of each real photo."""
    rng = np.random.RandomState(seed)
    photos = ['cat.jpg', 'fish-bike.jpg', 'cat_gray.jpg']
    for photo in photos:
        source = Image.open(os.path.join(ROOT, 'tests', 'data', photo))
        source = source.convert('RGB')
        folder = os.path.join(out_dir, photo.split('.')[0])
        os.makedirs(folder)
        width, height = source.size
        for i in range(per_class):
            scale = rng.uniform(0.5, 1.0)
            w, h = int(width * scale), int(height * scale)
            left = rng.randint(0, width - w + 1)
            top = rng.randint(0, height - h + 1)
            view = source.crop((left, top, left + w, top + h))
            if rng.randint(2):
                view = view.transpose(Image.FLIP_LEFT_RIGHT)
            pixels = np.asarray(view, np.float32) * rng.uniform(0.7, 1.3, 3)
            Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(
                os.path.join(folder, '%03d.jpg' % i), quality=90)
    return out_dir


def epoch_seconds(out):
    """Per-epoch wall time from the LogReport (elapsed at each epoch)."""
    log = json.load(open(os.path.join(out, 'log')))
    elapsed = [e['elapsed_time'] for e in log]
    return np.diff([0.0] + elapsed), log[-1]['validation/main/accuracy']


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument('--per-class', type=int, default=40)
    parser.add_argument('--epochs', type=int, default=4)
    parser.add_argument('--loaderjob', type=int, default=2)
    parser.add_argument('--batchsize', type=int, default=32)
    parser.add_argument('--freeze', default='conv1-conv5')
    parser.add_argument('--replace', default='fc6-fc8')
    parser.add_argument('--lr', default='0.001')
    args = parser.parse_args()
    from finetune_flickr_style import write_random_alexnet
    from finetune.train import build_parser, train
    work = tempfile.mkdtemp(prefix='bench_cache_')
    try:
        data = write_photo_classes(os.path.join(work, 'photos'),
                                   args.per_class)
        caffemodel = os.path.join(work, 'bvlc_alexnet.caffemodel')
        write_random_alexnet(caffemodel)
        results = {}
        runs = (('recompute, Chainer trunk', ['--trunk-backend', 'chainer']),
                ('recompute, OpenCV trunk', ['--trunk-backend', 'opencv']),
                ('cached features', ['--cache-features']))
        for name, extra in runs:
            out = os.path.join(work, name.replace(',', '').replace(' ', '_'))
            start = time.time()
            train(build_parser().parse_args([
                '--data', data, '--pretrained', caffemodel, '--out', out,
                '--freeze', args.freeze, '--replace', args.replace,
                '--epochs', str(args.epochs), '--batchsize',
                str(args.batchsize), '--lr', args.lr,
                '--val-split', '0.25', '--loaderjob', str(args.loaderjob),
                '--log-interval', '0', '--snapshot-interval', '100000']
                + extra))
            per_epoch, accuracy = epoch_seconds(out)
            results[name] = (time.time() - start, per_epoch, accuracy)
        print('\n%d images in 3 classes, %d epochs, batch %d, %d loader '
              'workers, AlexNet --freeze %s --replace %s' % (
                  3 * args.per_class, args.epochs, args.batchsize,
                  args.loaderjob, args.freeze, args.replace))
        print('%-26s %8s %10s %11s %8s' % ('run', 'total s', 'epoch 1 s',
                                           'epoch 2+ s', 'val acc'))
        for name, (total, per_epoch, accuracy) in results.items():
            print('%-26s %8.1f %10.2f %11.2f %8.3f' % (
                name, total, per_epoch[0], np.median(per_epoch[1:]),
                accuracy))
        fast = np.median(results['cached features'][1][1:])
        for name, _ in runs[:2]:
            slow = np.median(results[name][1][1:])
            print('cached head-only epoch vs %s: %.1fx faster; val accuracy '
                  'difference %+.3f' % (name, slow / fast,
                                        results['cached features'][2]
                                        - results[name][2]))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == '__main__':
    main()
