"""Classify images with a finetune model file.

    python -m finetune.predict --model pretrained/bvlc_alexnet.npz cat.jpg
    python -m finetune.predict --model result/model_best.npz photos/ \\
        -B 256 -d 0 -o preds.csv

Without ``--out`` the top-k classes of each image are printed. With it,
every image (files or folders, searched recursively) streams through
parallel loader processes to the model in batches, with a progress bar, and
one CSV row per image is written: ``path,label,probability,top_k,error``.
Unreadable images are reported in the ``error`` column and skipped. The
library call is :func:`finetune.inference.batch.label_images`.

Batch jobs: rows are made durable in chunks, so the same command after a
crash or kill (or with ``--resume``) keeps them and labels only the rest;
``mpiexec -n N python -m finetune.predict ...`` splits the images over N
processes (``--device`` per rank as in ``train``) and writes the same CSV as
one process; ``--features LAYER`` also writes each image's activations at
that layer to ``<out>.npy`` (float32, one row per CSV row).
"""
import argparse
import sys

from finetune.common.allocator import keep_freed_memory
from finetune.common.cli import add_batchsize_argument
from finetune.common.cli import add_device_argument
from finetune.common.cli import add_model_argument
from finetune.common.cli import add_tta_argument
from finetune.common.cli import command
from finetune.common.cli import non_negative_int
from finetune.common.cli import positive_int


def build_parser():
    parser = argparse.ArgumentParser(
        prog='python -m finetune.predict', description=__doc__.split('\n')[0])
    parser.add_argument('images', nargs='+', help='image files or folders')
    add_model_argument(parser)
    parser.add_argument('-o', '--out', help='write CSV predictions here')
    parser.add_argument('--top', type=positive_int, default=5,
                        help='classes shown per image (default: %(default)s)')
    add_tta_argument(parser)
    jobs = parser.add_argument_group('batch jobs')
    jobs.add_argument('--features', metavar='LAYER',
                      help="also write each image's activations at LAYER "
                      "(e.g. fc7, pool5) to the --out name with .npy")
    jobs.add_argument('--resume', action='store_true',
                      help='continue the interrupted run of --out (the '
                      'same command without it also does; with it, no '
                      'partial run is an error)')
    jobs.add_argument('--chunk', type=positive_int, default=1024,
                      help='images made durable at a time (default: '
                      '%(default)s)')
    loading = parser.add_argument_group('data loading')
    add_batchsize_argument(loading, default=64)
    loading.add_argument('-j', '--loaderjob', type=non_negative_int,
                         default=2, help='image-loading processes (0: in '
                         'this process; default: %(default)s)')
    device = parser.add_argument_group('device')
    add_device_argument(device)
    device.add_argument('--backend', choices=['auto', 'opencv', 'chainer'],
                        default='auto', help="CPU engine: OpenCV's dnn "
                        "('auto' when installed; exact, faster) or Chainer")
    return parser


@command(on_interrupt='the rows written so far are kept; run the same '
         'command again to label the rest')
def main(argv=None):
    args = build_parser().parse_args(argv)
    keep_freed_memory()
    # imported after parsing: --help and a bad flag stay light (no chainer)
    from finetune.inference.batch import label_images
    return label_images(args.model, args.images, args.out, args.batchsize,
                        args.loaderjob, args.top, args.device, args.backend,
                        args.features, args.resume, args.chunk,
                        tta=args.tta)


if __name__ == '__main__':
    sys.exit(main())
