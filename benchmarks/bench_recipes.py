#!/usr/bin/env python
"""Fine-tuning recipes on the demo's flowers, scored on 1,000 held-out photos.

    python scripts/pick_flowers_subset.py /tmp/subset \
        --held-out /tmp/flowers-held-out --source ../shared/datasets/flowers
    .venv/bin/python benchmarks/bench_recipes.py /tmp/flowers-held-out
    .venv/bin/python benchmarks/bench_recipes.py /tmp/flowers-held-out --quick

Trains on examples/flowers/photos as the demo does (open_nsfw, a third of
each class validating, 16-photo batches, 5 cached crops per photo) with two
training recipes, as a user would, through ``python -m finetune.train``:

  linear   the demo: ``--freeze up-to:pool --replace fc_nsfw``, 20 epochs
  stage3   head warm-up, then the last ResNet stage trains too:
           ``--unfreeze conv_stage3_block0_proj_shortcut --warmup-epochs 10
           --trunk-lr-mult 0.1 --lr-schedule cosine``, 20 epochs

and scores each ``model_final.npz`` on the held-out folder (one sub-folder
per class, none of its photos shipped) with ``python -m finetune.predict``,
once on the centre crop and once with ``--tta`` (Caffe's 10 crops): four
recipes. Prints each one's held-out accuracy with its binomial noise
sqrt(p (1 - p) / n), its paired difference from the linear head on the
same photos (with its standard error sqrt(gains + losses) / n and the
photos it gets right and wrong that the linear head does not), the
wall-clock seconds of training and of evaluation
and the peak resident memory of that command (its largest process, from
``wait4``). ``--quick``: 2 epochs (1 of warm-up) and 20 held-out photos per
class, a smoke run of the whole script.
"""
import argparse
import csv
import math
import os
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common as C  # noqa: E402

FLOWERS = os.path.join(C.ROOT, 'examples', 'flowers', 'photos')
DEMO = ['--data', FLOWERS, '--pretrained', 'open_nsfw', '--replace',
        'fc_nsfw', '--cache-features', '--cache-crops', '5',
        '--val-split', '0.333', '--batchsize', '16', '--log-interval', '0',
        '--snapshot-interval', '0', '--keep-snapshots', '1']
#: training recipe -> (its options, a function of the epochs)
TRAINING = {
    'linear': lambda epochs: ['--freeze', 'up-to:pool', '--epochs',
                              str(epochs)],
    'stage3': lambda epochs: ['--unfreeze', 'conv_stage3_block0_proj_shortcut',
                              '--warmup-epochs', str(epochs // 2),
                              '--trunk-lr-mult', '0.1', '--lr-schedule',
                              'cosine', '--epochs', str(epochs)],
}


def run(argv, log):
    """Run ``python argv`` (stdout and stderr to the file ``log``);
    (seconds, peak RSS in MiB of its largest process)."""
    start = time.perf_counter()
    with open(log, 'w') as out:
        child = subprocess.Popen([sys.executable] + argv, cwd=C.ROOT,
                                 stdout=out, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(child.pid, 0)
    seconds = time.perf_counter() - start
    child.returncode = os.waitstatus_to_exitcode(status)
    if child.returncode:
        with open(log) as f:
            tail = f.read()[-2000:]
        sys.exit('%s failed (%d):\n%s' % (' '.join(argv), child.returncode,
                                          tail))
    return seconds, usage.ru_maxrss / 1024.0


def held_out_photos(folder, per_class=None):
    """[(path, class)] of the class sub-folders of ``folder``, sorted; the
    first ``per_class`` of each with a number."""
    photos = []
    for name in sorted(os.listdir(folder)):
        files = sorted(os.listdir(os.path.join(folder, name)))[:per_class]
        photos += [(os.path.join(folder, name, f), name) for f in files]
    return photos


def right_answers(predictions_csv, photos):
    """{path: whether the CSV's label is its class} of ``photos`` (an
    image that could not be read is wrong)."""
    with open(predictions_csv) as f:
        labels = {row['path']: row['label'] for row in csv.DictReader(f)
                  if not row['error']}
    return {path: labels.get(path) == name for path, name in photos}


def paired_difference(right, base):
    """(accuracy of ``right`` minus that of ``base`` on the same photos,
    its standard error sqrt(gains + losses) / n, gains, losses): the
    paired comparison, tighter than the two binomial noises."""
    gains = sum(right[p] and not base[p] for p in base)
    losses = sum(base[p] and not right[p] for p in base)
    n = len(base)
    return (gains - losses) / n, math.sqrt(gains + losses) / n, gains, \
        losses


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('held_out', help='folder of held-out photos, one '
                        'sub-folder per class (scripts/pick_flowers_subset.py'
                        ' --held-out)')
    parser.add_argument('--quick', action='store_true',
                        help='2 epochs, 20 held-out photos per class')
    parser.add_argument('--threads', type=int, default=2)
    parser.add_argument('--work', help='folder for the runs (default: a '
                        'temporary one, removed)')
    args = parser.parse_args(argv)
    removed = C.setup_threads(args.threads)
    C.emit(C.environment_report(args.threads, removed))
    epochs = 2 if args.quick else 20
    photos = held_out_photos(args.held_out, 20 if args.quick else None)
    with tempfile.TemporaryDirectory() as temporary:
        work = args.work or temporary
        rows, base = [], None
        for recipe, options in TRAINING.items():
            out = os.path.join(work, recipe)
            train_s, train_mib = run(
                ['-m', 'finetune.train'] + DEMO + options(epochs) + [
                    '--out', out, '--overwrite'],
                os.path.join(work, recipe + '-train.log'))
            for tta in (False, True):
                name = recipe + (' + tta' if tta else '')
                preds = os.path.join(work, '%s%s.csv' % (
                    recipe, '-tta' if tta else ''))
                if os.path.exists(preds):
                    os.remove(preds)
                eval_s, eval_mib = run(
                    ['-m', 'finetune.predict', '--model',
                     os.path.join(out, 'model_final.npz'), '--top', '1',
                     '-o', preds] + (['--tta'] if tta else []) +
                    [path for path, _ in photos], preds + '.log')
                right = right_answers(preds, photos)
                base = base or right
                acc = sum(right.values()) / len(photos)
                noise = math.sqrt(acc * (1 - acc) / len(photos))
                rows.append([name, '%.3f +- %.3f' % (acc, noise),
                             '%+.3f +- %.3f (+%d -%d)' % paired_difference(
                                 right, base), train_s, eval_s, train_mib,
                             eval_mib])
                C.emit(['%s: %.3f' % (name, acc)])
    C.emit(C.table(
        ['recipe', 'held-out accuracy', 'vs linear (paired)', 'train s',
         'eval s',
         'train MiB', 'eval MiB'], rows,
        title='\n%d held-out photos, %d epochs (model_final.npz); MiB: peak '
        'RSS of the largest process' % (len(photos), epochs)))


if __name__ == '__main__':
    main()
