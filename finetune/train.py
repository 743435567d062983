"""Fine-tune a pretrained Caffe net on a folder of class sub-folders.

    python -m finetune.train --data photos/ --freeze conv1-conv5

reads ``photos/<class>/*.jpg``, imports the pretrained weights (the BVLC
AlexNet by default; ``--pretrained NAME`` for any registry entry, or a
.caffemodel/.npz), freezes the named layers, replaces the head (by default
fc6-fc8 on AlexNet and CaffeNet, the last InnerProduct on other nets) with
one sized for the classes found, and trains with Caffe's fine-tuning
defaults (MomentumSGD, lr 0.001, momentum 0.9, weight decay
5e-4, head lr x10). ``--out`` (default ``result/``) receives the log,
plots, snapshots (resume with ``--resume auto``), ``model_best.npz``,
``model_final.npz`` and an evaluation report. The library call is
:func:`finetune.fit` with a :class:`finetune.TrainConfig`.
"""
import sys

from finetune.common.cli import command
from finetune.training.config import build_parser
from finetune.training.config import config_from_args


@command(on_interrupt='continue with the same command and --resume auto')
def main(argv=None):
    args = build_parser(description=__doc__.split('\n')[0]).parse_args(argv)
    config = config_from_args(args)
    from finetune.training.fit import fit
    fit(config)


if __name__ == '__main__':
    sys.exit(main())
