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
from finetune.common.cli import command
from finetune.inference.onnx import MAX_OPSET
from finetune.inference.onnx import MIN_OPSET
from finetune.inference.onnx import describe_export
from finetune.inference.onnx import export_onnx


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
    parser.add_argument('--model', required=True,
                        help='finetune model file (.npz)')
    parser.add_argument('-o', '--out', '--onnx', dest='out', required=True,
                        help='output .onnx file')
    graph = parser.add_argument_group('graph')
    graph.add_argument('-B', '--batchsize', '--batch', dest='batchsize',
                       type=batch_size, default=1,
                       help="batch size of the graph, or 'dynamic' for any "
                       '(default 1)')
    graph.add_argument('--opset', type=Range(int, MIN_OPSET, MAX_OPSET),
                       default=None,
                       help='ONNX opset, %d to %d (default %d)'
                       % (MIN_OPSET, MAX_OPSET, MAX_OPSET))
    return parser


@command
def main(argv=None):
    args = build_parser().parse_args(argv)
    onnx_model = export_onnx(args.model, args.out, args.batchsize,
                             args.opset)
    print(describe_export(onnx_model, args.out))
    return 0


if __name__ == '__main__':
    sys.exit(main())
