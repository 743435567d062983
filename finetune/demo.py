"""The embedded demo: fine-tune a real Caffe LeNet on new handwriting.

    python -m finetune.demo [--out result/demo]

No downloads. scikit-learn's bundled handwritten digits (1,797 8x8 scans
from a different source than MNIST) are written as a class-folder image
dataset; the real Caffe-trained LeNet in ``examples/lenet`` is converted
and fine-tuned with its conv layers frozen; the same budget from random
weights is the baseline. Both validation accuracies are printed.
"""
import argparse
import sys
import os

import numpy as np
from PIL import Image

from finetune.common.allocator import keep_freed_memory
from finetune.common.cli import command
from finetune.common.cli import non_negative_int
from finetune.common.cli import positive_int
from finetune.caffe.conversion import ConversionOptions
from finetune.caffe.conversion import ensure_converted

LENET_DIR = os.path.join(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))), 'examples', 'lenet')


def write_digit_folders(out_dir, train_fraction=1.0, seed=0):
    """Write sklearn's digits as ``out_dir/<digit>/<n>.png`` (28x28, MNIST-
    style: white ink on black, the digit in the central 20x20 box).

    ``train_fraction`` keeps a random part of each class (the demo uses
    a small fraction to show what pretraining buys with little data).
    """
    from sklearn.datasets import load_digits
    digits = load_digits()
    rng = np.random.RandomState(seed)
    for label in range(10):
        folder = os.path.join(out_dir, str(label))
        os.makedirs(folder, exist_ok=True)
        indices = np.flatnonzero(digits.target == label)
        keep = rng.permutation(indices)[:max(2, int(len(indices)
                                                    * train_fraction))]
        for i in keep:
            ink = (digits.images[i] * (255.0 / 16)).astype(np.uint8)
            box = Image.fromarray(ink).resize((20, 20), Image.BILINEAR)
            canvas = Image.new('L', (28, 28), 0)
            canvas.paste(box, (4, 4))
            canvas.save(os.path.join(folder, '%04d.png' % i))
    return out_dir


def convert_lenet(out_dir):
    """The real LeNet caffemodel as a finetune .npz (inputs scaled 1/256)."""
    os.makedirs(out_dir, exist_ok=True)
    path, _ = ensure_converted(
        os.path.join(LENET_DIR, 'lenet_iter_10000.caffemodel'),
        ConversionOptions(
            prototxt=os.path.join(LENET_DIR, 'lenet_deploy.prototxt'),
            labels=os.path.join(LENET_DIR, 'labels.txt'), scale=1 / 256),
        out=os.path.join(out_dir, 'lenet.npz'))
    return path


def run_demo(out_dir, epochs=8, fraction=0.1, loaderjob=2, seed=0,
             scratch_rates=(0.01, 0.03)):
    """Fine-tune vs from-scratch; returns both validation accuracies.

    The fine-tuned net uses finetune's defaults (Caffe's recipe: lr 0.001,
    new head x10). The from-scratch baseline gets the best of
    ``scratch_rates`` (all layers at that rate), so it is not handicapped
    by a rate tuned for pretrained weights.
    """
    from finetune.training.config import TrainConfig
    from finetune.training.fit import fit
    data = write_digit_folders(os.path.join(out_dir, 'digits'), fraction,
                               seed)
    pretrained = convert_lenet(out_dir)

    def run(name, **options):
        print('== %s' % name, flush=True)
        config = TrainConfig(
            data=data, pretrained=pretrained, epochs=epochs, batchsize=16,
            val_split=0.5, loaderjob=loaderjob, seed=seed, log_interval=0,
            snapshot_interval=1000, out=os.path.join(out_dir,
                                                     name.split()[0]),
            **options)
        return fit(config).metrics['top1_accuracy']

    finetuned = run('finetuned (conv1-conv2 frozen, ip1-ip2 new)',
                    freeze='conv1-conv2', replace='ip1-ip2')
    scratch = {lr: run('scratch_lr%g (all layers random)' % lr,
                       freeze='none', replace='all', lr=lr,
                       head_lr_mult=1.0) for lr in scratch_rates}
    best_lr = max(scratch, key=scratch.get)
    results = {'fine-tuned from Caffe LeNet': finetuned,
               'from scratch (best lr %g)' % best_lr: scratch[best_lr]}
    print('\nvalidation accuracy after %d epochs on %d%% of the digits:'
          % (epochs, round(fraction * 100)))
    for name, accuracy in results.items():
        print('  %-34s %.3f' % (name, accuracy))
    return results


@command
def main(argv=None):
    parser = argparse.ArgumentParser(prog='python -m finetune.demo',
                                     description=__doc__.split('\n')[0])
    parser.add_argument('-o', '--out', default=os.path.join('result', 'demo'))
    parser.add_argument('-E', '--epochs', type=positive_int, default=8)
    parser.add_argument('--fraction', type=float, default=0.1,
                        help='part of the digits used (train + val)')
    parser.add_argument('-j', '--loaderjob', type=non_negative_int,
                        default=2)
    args = parser.parse_args(argv)
    keep_freed_memory()
    run_demo(args.out, args.epochs, args.fraction, args.loaderjob)


if __name__ == '__main__':
    sys.exit(main())
