"""Convert a caffemodel into a finetune model file (.npz).

    python -m finetune.convert pretrained/bvlc_alexnet.caffemodel
    python -m finetune.convert flickr_style          # a registry name
    python -m finetune.convert net.caffemodel --prototxt deploy.prototxt

writes the weights with the class names, the mean and the crop size into
the per-user cache's ``converted/`` folder (:mod:`finetune.weights.cache`;
``--out`` names another file or folder). A registry name
(``python -m finetune.fetch --list``) brings its own prototxt, class names
and preprocessing; a bare AlexNet/CaffeNet file is recognised by its
layers; any other net needs ``--prototxt``. The library call is
:func:`finetune.weights.conversion.ensure_converted`.
"""
import argparse
import sys

from finetune.common.cli import add_class_names_argument
from finetune.common.cli import command
from finetune.common.cli import image_size
from finetune.common.cli import positive_float


def build_parser():
    parser = argparse.ArgumentParser(
        prog='python -m finetune.convert', description=__doc__.split('\n')[0])
    parser.add_argument('caffemodel', help='.caffemodel file or a registry '
                        'name (alexnet, flickr_style, open_nsfw)')
    parser.add_argument('-o', '--out', help='output .npz file, or a folder '
                        'to write it in (default: the cache, '
                        '$FINETUNE_CACHE/converted or ~/.cache/finetune/'
                        'converted)')
    definition = parser.add_argument_group('network')
    definition.add_argument('--prototxt',
                            help='deploy definition (nets other than '
                            'AlexNet/CaffeNet)')
    add_class_names_argument(definition)
    preprocessing = parser.add_argument_group('input preprocessing')
    preprocessing.add_argument(
        '--mean', help="'imagenet' (AlexNet default), 'none', an .npy image "
        "or 'B,G,R'")
    preprocessing.add_argument('--scale', type=positive_float,
                               help='input multiplier after the mean '
                               '(default 1)')
    preprocessing.add_argument(
        '--resize', type=image_size, metavar='H,W',
        help="resize images to H,W and take crops of the net's input size "
        '(random ones in training); default: resize to the input, no crop '
        '(AlexNet: 256,256 and 227 crops)')
    parser.add_argument('--force', action='store_true',
                        help='convert even if the .npz is up to date')
    return parser


@command
def main(argv=None):
    args = build_parser().parse_args(argv)
    # imported after parsing: --help and a bad flag stay light (no chainer)
    from finetune.weights.conversion import ConversionOptions
    from finetune.weights.conversion import ensure_converted
    from finetune.weights.conversion import parse_mean
    options = ConversionOptions(prototxt=args.prototxt, labels=args.class_names,
                                mean=parse_mean(args.mean), scale=args.scale,
                                resize=args.resize)
    mean_file = [args.mean] if args.mean and args.mean.endswith('.npy') \
        else []
    out, converted = ensure_converted(args.caffemodel, options, args.out,
                                      force=args.force, inputs=mean_file)
    print('%s %s' % ('wrote' if converted else 'up to date:', out))


if __name__ == '__main__':
    sys.exit(main())
