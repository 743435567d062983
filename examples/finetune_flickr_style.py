"""Fine-tune BVLC AlexNet on an image folder, Caffe Flickr-Style recipe.

Caffe's models/finetune_flickr_style keeps every pretrained layer, replaces
only fc8 (10x learning rate for it, 20x for its bias), and trains with
base_lr 0.001, momentum 0.9, weight decay 5e-4, lr x0.1 every 20,000
iterations (batch 50). With finetune that is::

    python examples/finetune_flickr_style.py --data photos/ --device 0

where ``photos/`` holds one sub-folder per style (``python -m
finetune.gather flickr_style.csv.gz --out photos/ ...`` builds it from
Caffe's URL list). ``--random-weights`` stands in a random-weights BVLC
AlexNet caffemodel when the real one has not been fetched (for trying the
pipeline offline; the results then mean nothing).
"""
import argparse
import os
import sys

import finetune
from finetune.weights.random_model import write_random_alexnet
from finetune.common.cli import add_device_argument
from finetune.common.cli import command
from finetune.weights.registry import pretrained_model


@command
def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--data', required=True)
    parser.add_argument('-o', '--out', default='result/flickr_style')
    parser.add_argument('--pretrained-dir', default='pretrained')
    add_device_argument(parser)
    parser.add_argument('-E', '--epochs', type=int, default=10)
    parser.add_argument('-B', '--batchsize', type=int, default=50)
    parser.add_argument('-j', '--loaderjob', type=int, default=4)
    parser.add_argument('--random-weights', action='store_true',
                        help='write a random-weights caffemodel if the '
                        'AlexNet weights are missing')
    args = parser.parse_args(argv)
    caffemodel = pretrained_model('alexnet').local_path(args.pretrained_dir)
    if args.random_weights and not os.path.exists(caffemodel):
        print('%s missing: writing random weights (demo only)' % caffemodel,
              file=sys.stderr)
        write_random_alexnet(caffemodel)
    finetune.fit(finetune.TrainConfig(
        data=args.data, out=args.out, pretrained='alexnet',
        pretrained_dir=args.pretrained_dir, device=args.device,
        replace='fc8', freeze='none', head_lr_mult=10.0, lr=0.001,
        momentum=0.9, weight_decay=5e-4, lr_step=max(1, args.epochs // 2),
        lr_gamma=0.1, epochs=args.epochs, batchsize=args.batchsize,
        loaderjob=args.loaderjob))


if __name__ == '__main__':
    sys.exit(main())
