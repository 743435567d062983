"""Fine-tune BVLC AlexNet on an image folder, Caffe Flickr-Style recipe.

Caffe's models/finetune_flickr_style keeps every pretrained layer, replaces
only fc8 (10x learning rate for it, 20x for its bias), and trains with
base_lr 0.001, momentum 0.9, weight decay 5e-4, lr x0.1 every 20,000
iterations (batch 50). With finetune that is::

    python examples/finetune_flickr_style.py --data photos/ --gpu 0

where ``photos/`` holds one sub-folder per style (``python -m
finetune.gather flickr_style.csv.gz --out photos/ ...`` builds it from
Caffe's URL list). ``--random-weights`` stands in a random-weights BVLC
AlexNet caffemodel when the real one has not been fetched (for trying the
pipeline offline; the results then mean nothing).
"""
import argparse
import os
import sys

import finetune  # NOQA: before chainer, so pip CUDA libraries are found
import chainer
import numpy as np

from finetune.caffe.caffemodel import parse_net_text
from finetune.caffe.writer import random_weights
from finetune.caffe.writer import write_caffemodel
from finetune.common.cli import command
from finetune.models import AlexNet
from finetune.train import DEFAULT_PRETRAINED
from finetune.train import build_parser
from finetune.train import train

ALEXNET_DEPLOY = os.path.join(os.path.dirname(os.path.abspath(__file__)),
                              'bvlc_alexnet_deploy.prototxt')


def write_random_alexnet(path, seed=0):
    """A BVLC-layout AlexNet caffemodel (V1 format) with random weights.

    conv1 is scaled down by 100 (inputs are mean-subtracted 0-255 pixels)
    so activations stay near 1, like a trained net's, and training from it
    does not blow up.
    """
    with open(ALEXNET_DEPLOY) as f:
        net = parse_net_text(f.read(), ALEXNET_DEPLOY)
    skeleton = AlexNet(initialW=chainer.initializers.Zero())
    weights = random_weights(skeleton, np.random.RandomState(seed))
    weights['conv1'][0] /= 100
    os.makedirs(os.path.dirname(path) or '.', exist_ok=True)
    write_caffemodel(path, net, weights, v1=True)


@command
def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--data', required=True)
    parser.add_argument('--out', default='result/flickr_style')
    parser.add_argument('--pretrained', default=DEFAULT_PRETRAINED)
    parser.add_argument('--gpu', type=int, default=-1)
    parser.add_argument('--epochs', type=int, default=10)
    parser.add_argument('--batchsize', type=int, default=50)
    parser.add_argument('--loaderjob', type=int, default=4)
    parser.add_argument('--random-weights', action='store_true',
                        help='write a random-weights caffemodel if '
                        '--pretrained is missing')
    args = parser.parse_args(argv)
    if args.random_weights and not os.path.exists(args.pretrained):
        print('%s missing: writing random weights (demo only)'
              % args.pretrained, file=sys.stderr)
        write_random_alexnet(args.pretrained)
    train(build_parser().parse_args([
        '--data', args.data, '--out', args.out,
        '--pretrained', args.pretrained, '--gpu', str(args.gpu),
        '--replace', 'fc8', '--freeze', 'none', '--head-lr-mult', '10',
        '--lr', '0.001', '--momentum', '0.9', '--weight-decay', '5e-4',
        '--lr-step', str(max(1, args.epochs // 2)), '--lr-gamma', '0.1',
        '--epochs', str(args.epochs), '--batchsize', str(args.batchsize),
        '--loaderjob', str(args.loaderjob)]))


if __name__ == '__main__':
    sys.exit(main())
