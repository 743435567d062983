"""Export a finetune model file to ONNX.

    python -m finetune.export --model result/model_best.npz -o model.onnx
    python -m finetune.export --model m.npz -o m.onnx --batchsize dynamic

Needs ``pip install 'finetune[onnx]'``. The library call is
:func:`finetune.inference.onnx.export_onnx`; its docstring says what the
file holds.
"""
import argparse
import sys

from finetune.common.cli import Range
from finetune.common.cli import add_batchsize_argument
from finetune.common.cli import add_model_argument
from finetune.common.cli import command
from finetune.inference import MAX_OPSET
from finetune.inference import MIN_OPSET


def batch_size(text):
    """argparse type: a positive integer or 'dynamic' (None)."""
    if text == 'dynamic':
        return None
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(
            "expected a positive integer or 'dynamic', not %r" % text)
    return value


def build_parser():
    parser = argparse.ArgumentParser(
        prog='python -m finetune.export', description=__doc__.split('\n')[0])
    add_model_argument(parser)
    parser.add_argument('-o', '--out', '--onnx', dest='out', required=True,
                        help='output .onnx file')
    graph = parser.add_argument_group('graph')
    add_batchsize_argument(graph, default=1, kind=batch_size,
                           help_text="batch size of the graph, or 'dynamic' "
                           'for any')
    graph.add_argument('--opset', type=Range(int, MIN_OPSET, MAX_OPSET),
                       default=None,
                       help='ONNX opset, %d to %d (default %d)'
                       % (MIN_OPSET, MAX_OPSET, MAX_OPSET))
    return parser


@command
def main(argv=None):
    args = build_parser().parse_args(argv)
    # imported after parsing: --help and a bad flag stay light (no chainer)
    from finetune.inference.onnx import describe_export
    from finetune.inference.onnx import export_onnx
    onnx_model = export_onnx(args.model, args.out, args.batchsize,
                             args.opset)
    print(describe_export(onnx_model, args.out))
    return 0


if __name__ == '__main__':
    sys.exit(main())
