"""Download pretrained Caffe weights, resumably, and verify their SHA-1.

    python -m finetune.fetch alexnet [-o DIR]
    python -m finetune.fetch --list

The weights go to the per-user cache (``$FINETUNE_CACHE``, else
``$XDG_CACHE_HOME/finetune``, else ``~/.cache/finetune``; ``weights/``
inside) unless ``-o`` names a folder. The library call is
:func:`finetune.weights.download.fetch_model`; the models are those of
:mod:`finetune.weights.registry`.
"""
import argparse
import sys

from finetune.common.cli import command
from finetune.common.cli import non_negative_int
from finetune.common.cli import positive_float
from finetune.weights.download import describe_registry
from finetune.weights.download import fetch_model
from finetune.weights.registry import REGISTRY


def build_parser():
    """The command-line interface of ``python -m finetune.fetch``."""
    parser = argparse.ArgumentParser(
        prog='python -m finetune.fetch', description=__doc__.split('\n')[0])
    parser.add_argument('model', nargs='?', choices=sorted(REGISTRY),
                        help='which weights to download')
    parser.add_argument('--list', action='store_true',
                        help='list the registry and stop')
    parser.add_argument('-o', '--out', '--dir', dest='out',
                        help='destination folder (default: the cache, '
                        '$FINETUNE_CACHE/weights or ~/.cache/finetune/'
                        'weights)')
    transfer = parser.add_argument_group('transfer')
    transfer.add_argument('--url', help='download from this URL instead (a '
                          'mirror); the sha1 is still checked')
    transfer.add_argument('--timeout', type=positive_float, default=60.0,
                          help='seconds to connect and for each read '
                          '(default: %(default)s)')
    transfer.add_argument('--retries', type=non_negative_int, default=4,
                          help='retries after network errors, each resuming '
                          '(default: %(default)s)')
    transfer.add_argument('--no-progress', action='store_true',
                          help='do not draw a progress bar')
    return parser


@command
def main(argv=None):
    """Run the CLI; return 0, or exit with status 2 and a one-line error."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.list:
        print(describe_registry())
        return 0
    if args.model is None:
        parser.error('give a model name (or --list)')
    fetch_model(args.model, args.out, args.url, timeout=args.timeout,
                retries=args.retries, progress=not args.no_progress)
    return 0


if __name__ == '__main__':
    sys.exit(main())
