"""Fine-tune pretrained Caffe weights on a folder of class sub-folders.

    python -m finetune.train --data photos/ --freeze conv1-conv5

reads ``photos/<class>/*.jpg``, imports ``pretrained/bvlc_alexnet.caffemodel``
(converted once to .npz), freezes the named layers, replaces the head
(fc6-fc8 by default) with one sized for the classes found, and trains with
Caffe's fine-tuning defaults (MomentumSGD, lr 0.001, momentum 0.9, weight
decay 5e-4, head lr x10). ``--out`` (default ``result/``) receives the log,
plots, snapshots (resume with ``--resume auto``), ``model_best.npz`` and an
evaluation report.
"""
import argparse
import os
import sys

import chainer
import numpy as np
from chainer.training import extensions

from finetune.data import folder as data_lib
from finetune.training import report as evaluation
from finetune.models.model_file import load_model
from finetune.models.model_file import save_model
from finetune.common.allocator import keep_freed_memory
from finetune.common.cli import command
from finetune.convert import ensure_converted
from finetune.data.datasets import LabeledImageDataset
from finetune.training.distributed import ranks_for
from finetune.common.errors import FinetuneError
from finetune.data.feature_cache import CachedCropConverter
from finetune.data.feature_cache import CachedFeatureDataset
from finetune.data.feature_cache import cached_features
from finetune.common.gpu import device as gpu_device
from finetune.inference.predictor import Predictor
from finetune.data.loader import make_iterator
from finetune.training.lr_find import lr_range_test
from finetune.training.lr_find import plot_lr_find
from finetune.predict import predict_paths
from finetune.training.solver import CaffeSGD
from finetune.training.solver import set_caffe_lr_policy
from finetune.training.surgery import FineTuneNet
from finetune.training.surgery import freeze_layers
from finetune.training.surgery import frozen_prefix
from finetune.training.surgery import parse_layer_spec
from finetune.training.surgery import replace_head
from finetune.training.surgery import set_param_dtype
from finetune.training.extensions import Classifier
from finetune.training.extensions import EpochOrIntervalTrigger
from finetune.training.extensions import latest_snapshot
from finetune.training.extensions import RandomCropConverter
from finetune.training.extensions import SeededUpdater
from finetune.training.extensions import SaveBestModel
from finetune.training.extensions import save_snapshot
from finetune.training.extensions import SNAPSHOT_PREFIX
from finetune.data.transforms import CaffePreprocess

DEFAULT_PRETRAINED = os.path.join('pretrained', 'bvlc_alexnet.caffemodel')


def load_pretrained(path, prototxt=None):
    """(model, meta, preprocess) from a .npz or .caffemodel (converted once).

    Raises:
        FinetuneError: the file is missing; the message says how to get it.
    """
    if not os.path.exists(path):
        hint = ('run: python -m finetune.fetch alexnet'
                if path == DEFAULT_PRETRAINED else
                'pass --pretrained with a .caffemodel or .npz')
        raise FinetuneError('%s: pretrained weights not found; %s'
                            % (path, hint))
    if path.endswith('.caffemodel'):
        path, _ = ensure_converted(path, prototxt=prototxt)
    return load_model(path)


def choose_preprocess(preprocess, mean, prepared_mean):
    """The pretrained net's preprocessing with the ``--mean`` choice."""
    if mean == 'pretrained':
        return preprocess
    means = {'dataset': prepared_mean, 'none': None}
    return CaffePreprocess(preprocess.size, preprocess.crop_size,
                           means[mean], preprocess.scale,
                           preprocess.channels)


def prepare_lists(args, channels, size):
    """Train/val lists: reused from ``--out`` when resuming, else built."""
    train_txt = os.path.join(args.out, 'train.txt')
    if args.resume and os.path.exists(train_txt):
        train, names = data_lib.read_label_file(train_txt, args.data)
        val, _ = data_lib.read_label_file(os.path.join(args.out, 'val.txt'),
                                          args.data)
        mean_path = os.path.join(args.out, 'mean.npy')
        mean = data_lib.load_mean(mean_path) if os.path.exists(
            mean_path) else None
        return train, val, names, mean
    prepared = data_lib.prepare_dataset(
        args.data, args.out, val_split=args.val_split, seed=args.seed,
        label_file=args.label_file, compute_mean=args.mean == 'dataset',
        channels=channels, size=size, jobs=max(1, args.loaderjob))
    return prepared.train, prepared.val, prepared.class_names, prepared.mean


def build_network(args, pretrained, meta, n_classes):
    """The pretrained net after surgery: (FineTuneNet, head, frozen)."""
    head = parse_layer_spec(args.replace, pretrained.layer_names)
    frozen = parse_layer_spec(args.freeze, pretrained.layer_names)
    overlap = set(head) & set(frozen)
    if overlap:
        raise FinetuneError('layers both replaced and frozen: %s'
                            % ', '.join(sorted(overlap)))
    net = replace_head(pretrained, meta, head, n_classes)
    prefix = frozen_prefix(net.layer_names, frozen)
    return (FineTuneNet(net, prefix, trunk_backend=args.trunk_backend),
            head, frozen)


def make_optimizer(model, args, head, ranks):
    """CaffeSGD with Caffe's multipliers; with ``--dtype float16`` it
    keeps float32 master weights and scales the loss dynamically."""
    solver = CaffeSGD(lr=args.lr, momentum=args.momentum)
    if args.dtype == 'float16':
        solver.use_fp32_update()
        solver.loss_scaling()
    optimizer = ranks.optimizer(solver)
    optimizer.setup(model)
    set_caffe_lr_policy(model.predictor.net, head, args.weight_decay,
                        args.head_lr_mult)
    return optimizer


def add_extensions(trainer, args, job, save_best):
    """Evaluation and LR schedule on every rank; logs, plots, progress bar
    and snapshots on rank 0 only."""
    epoch = (1, 'epoch')
    log_trigger = EpochOrIntervalTrigger(args.log_interval)
    if job.val_iter is not None:
        trainer.extend(job.ranks.evaluator(extensions.Evaluator(
            job.val_iter, job.eval_model,
            converter=CachedCropConverter(0, train=False)
            if job.eval_model is not job.model
            else chainer.dataset.concat_examples, device=job.device)),
            trigger=epoch)
    if args.lr_step:
        trainer.extend(extensions.ExponentialShift('lr', args.lr_gamma),
                       trigger=(args.lr_step, 'epoch'))
    trainer.extend(extensions.FailOnNonNumber())
    if not job.ranks.is_root:
        return
    trainer.extend(extensions.observe_lr(), trigger=log_trigger)
    trainer.extend(extensions.LogReport(trigger=log_trigger))
    trainer.extend(extensions.PrintReport(
        ['epoch', 'iteration', 'main/loss', 'main/accuracy',
         'validation/main/loss', 'validation/main/accuracy',
         'validation/main/top5', 'lr', 'elapsed_time']), trigger=log_trigger)
    trainer.extend(extensions.ProgressBar(update_interval=1))
    if extensions.PlotReport.available():
        trainer.extend(extensions.PlotReport(
            ['main/loss', 'validation/main/loss'], 'epoch',
            file_name='loss.png'), trigger=epoch)
        trainer.extend(extensions.PlotReport(
            ['main/accuracy', 'validation/main/accuracy',
             'validation/main/top5'], 'epoch', file_name='accuracy.png'),
            trigger=epoch)
    trainer.extend(extensions.snapshot(
        savefun=save_snapshot,
        filename=SNAPSHOT_PREFIX + '{.updater.iteration}',
        n_retains=args.keep_snapshots),
        trigger=EpochOrIntervalTrigger(args.snapshot_interval))
    trainer.extend(SaveBestModel(save_best))


def evaluate_and_report(args, net, root, val, names, preprocess, device):
    """Probabilities on the validation set -> the evaluation report.

    Images that can no longer be read are left out of the report.
    """
    if not val:
        return None
    predictor = Predictor(net, names, preprocess, device=device,
                          backend=args.trunk_backend)
    rows = predict_paths(predictor, [os.path.join(root, p) for p, _ in val],
                         args.val_batchsize, args.loaderjob, progress=False)
    kept = [(path, label, probs) for (path, label), (_, probs, _)
            in zip(val, rows) if probs is not None]
    return evaluation.write_evaluation_report(
        args.out, np.stack([probs for _, _, probs in kept]),
        np.array([label for _, label, _ in kept]),
        [path for path, _, _ in kept], names)


class Job:
    """Everything a run is made of, built from the command-line arguments.

    Attributes: model (Classifier over a FineTuneNet), optimizer,
    train_iter, val_iter, converter, device, class_names, preprocess,
    head and frozen (layer names), val_list.
    """

    def __init__(self, args):
        np.random.seed(args.seed)
        self.ranks = ranks = ranks_for(args.communicator)
        gpu = args.gpu + ranks.intra_rank if args.gpu >= 0 else -1
        option = '--gpu %d' % args.gpu
        if ranks.size > 1:
            option += ' (rank %d: GPU %d)' % (ranks.rank, gpu)
        self.device = gpu_device(gpu, option)
        pretrained, self.meta, prep = load_pretrained(args.pretrained,
                                                      args.prototxt)
        lists = None
        if ranks.is_root:
            lists = prepare_lists(args, prep.channels, prep.size)
        train_list, self.val_list, self.class_names, data_mean = \
            ranks.bcast(lists)
        net, self.head, self.frozen = build_network(
            args, pretrained, self.meta, len(self.class_names))
        set_param_dtype(net, np.dtype(args.dtype))
        self.preprocess = choose_preprocess(prep, args.mean, data_mean)
        self.model = Classifier(net)
        self.model.to_device(self.device)
        self.device.use()
        self.optimizer = make_optimizer(self.model, args, self.head, ranks)
        freeze_layers(net.net, self.frozen)
        if args.cache_features and not net.frozen:
            raise FinetuneError('--cache-features needs frozen leading '
                                'layers, e.g. --freeze conv1-conv5')
        self.train_iter, self.converter = self._train_input(args, train_list)
        self.val_iter, self.eval_model = self._val_input(args)

    def _uncropped(self, root, entries):
        p = self.preprocess
        return LabeledImageDataset(root, entries, CaffePreprocess(
            p.size, None, p.mean, p.scale, p.channels))

    def _cache(self, args, split, entries, mode):
        """Path of the frozen-prefix features of ``entries`` (rank 0
        builds it; the others wait and read the same file)."""
        net = self.net
        path = None
        if self.ranks.is_root:
            path, built = cached_features(
                os.path.join(args.out, 'feature_cache'), split, net.net,
                net.net.layer_names[:net.frozen], net.features, args.data,
                entries, self._uncropped(args.data, entries),
                self.preprocess, mode, self.device, args.val_batchsize,
                args.loaderjob, args.cache_crops)
            print('%s features: %s %s' % (split, 'cached in' if built
                                          else 'reusing', path),
                  file=sys.stderr)
        return self.ranks.bcast(path)

    def _train_input(self, args, entries):
        """(iterator, converter): images, or cached features of
        ``--cache-crops`` random crops per image."""
        if args.cache_features:
            dataset = CachedFeatureDataset(
                self._cache(args, 'train', entries, 'random'),
                [label for _, label in entries])
            self.net.from_features = True
            return (make_iterator(self.ranks.scatter(dataset, args.seed),
                                  args.batchsize, 0, seed=args.seed),
                    CachedCropConverter(args.seed))
        return (make_iterator(self.ranks.scatter(self._uncropped(
            args.data, entries), args.seed), args.batchsize, args.loaderjob,
            seed=args.seed), RandomCropConverter(self.preprocess, args.seed))

    def _val_input(self, args):
        """(iterator, model) for evaluation each epoch; a frozen
        trunk is evaluated on its cached center-crop features."""
        if not self.val_list:
            return None, None
        if not self.net.frozen:
            dataset = LabeledImageDataset(args.data, self.val_list,
                                          self.preprocess)
            return make_iterator(self.ranks.scatter(dataset, args.seed),
                                 args.val_batchsize, args.loaderjob,
                                 repeat=False, shuffle=False), self.model
        dataset = CachedFeatureDataset(
            self._cache(args, 'val', self.val_list, 'center'),
            [label for _, label in self.val_list])
        head = Classifier(FineTuneNet(self.net.net, self.net.frozen,
                                      from_features=True,
                                      trunk_backend=args.trunk_backend))
        iterator = make_iterator(self.ranks.scatter(dataset, args.seed),
                                 args.val_batchsize, 0, repeat=False,
                                 shuffle=False)
        return iterator, head

    @property
    def net(self):
        """The FineTuneNet (frozen prefix without a graph)."""
        return self.model.predictor

    @property
    def network(self):
        """The plain network (AlexNet, CaffeGraph...) being trained."""
        return self.model.predictor.net

    def finalize(self):
        for iterator in (self.train_iter, self.val_iter):
            if iterator is not None:
                iterator.finalize()


def train(args):
    """Run (or resume) one fine-tuning job; returns the final report."""
    job = Job(args)
    updater = SeededUpdater(job.train_iter, job.optimizer, job.converter,
                            job.device, seed=args.seed, rank=job.ranks.rank)
    trainer = chainer.training.Trainer(updater, (args.epochs, 'epoch'),
                                       out=args.out)

    def save(path, **extra):
        save_model(path, job.network, job.class_names, job.preprocess,
                   frozen=job.frozen, replaced=job.head,
                   source=os.path.basename(args.pretrained), **extra)

    add_extensions(trainer, args, job,
                   lambda acc: save(os.path.join(args.out, 'model_best.npz'),
                                    val_accuracy=acc))
    resume = latest_snapshot(args.out) if args.resume == 'auto' \
        else args.resume
    if resume:
        if job.ranks.is_root:
            print('resuming from %s' % resume, file=sys.stderr)
        chainer.serializers.load_npz(resume, trainer)
    try:
        trainer.run()
    except RuntimeError as e:
        if 'diverge' not in str(e):
            raise
        raise FinetuneError(
            'training diverged (NaN or inf weights) by iteration %d; lower '
            '--lr (python -m finetune.train ... --lr-find suggests one); '
            'snapshots before it are in %s' % (updater.iteration, args.out)
        ) from None
    finally:
        job.finalize()
    agree = job.ranks.weights_agree(job.net)
    if not job.ranks.is_root:
        return None
    if job.ranks.size > 1:
        print('%d ranks hold %s weights' % (
            job.ranks.size, 'identical' if agree else 'DIFFERENT'),
            file=sys.stderr)
    set_param_dtype(job.network, np.float32)  # evaluated as it is saved
    save(os.path.join(args.out, 'model_final.npz'))
    summary = evaluate_and_report(args, job.network, args.data,
                                  job.val_list, job.class_names,
                                  job.preprocess, job.device)
    if summary:
        print(evaluation.format_summary(summary))
    return summary


def find_lr(args, n_steps=100, lr_min=1e-6, lr_max=1.0):
    """Learning-rate range test from the current weights (restored after);
    writes ``lr_find.png`` into ``--out`` and returns the result."""
    job = Job(args)

    def batches():
        while True:
            yield job.converter(job.train_iter.next(), job.device)

    try:
        with chainer.using_config('train', True):
            result = lr_range_test(job.model, job.optimizer, batches(),
                                   lr_min, lr_max, n_steps)
    finally:
        job.finalize()
    path = os.path.join(args.out, 'lr_find.png')
    plot_lr_find(result, path)
    print('suggested learning rate: %.2g (--lr); loss curve: %s'
          % (result.suggested_lr, path))
    return result


def build_parser():
    p = argparse.ArgumentParser(prog='python -m finetune.train',
                                description=__doc__.split('\n')[0])
    p.add_argument('--data', required=True,
                   help='folder with one sub-folder of images per class')
    p.add_argument('--label-file', help="'path label' lines instead of "
                   'sub-folders (paths relative to --data)')
    p.add_argument('--pretrained', default=DEFAULT_PRETRAINED,
                   help='.caffemodel or .npz (default: %(default)s)')
    p.add_argument('--prototxt', help='deploy prototxt for a non-AlexNet '
                   'caffemodel')
    p.add_argument('--freeze', default='none',
                   help="layers not trained: 'conv1-conv5', 'conv1,conv2', "
                   "'none' (default)")
    p.add_argument('--replace', default='fc6-fc8',
                   help='layers re-initialized as the new head '
                   '(default: %(default)s; Caffe Flickr-Style: fc8)')
    p.add_argument('--head-lr-mult', type=float, default=10.0)
    p.add_argument('--lr', type=float, default=0.001)
    p.add_argument('--momentum', type=float, default=0.9)
    p.add_argument('--weight-decay', type=float, default=5e-4)
    p.add_argument('--lr-step', type=int, default=0,
                   help='multiply lr by --lr-gamma every N epochs (0: never)')
    p.add_argument('--lr-gamma', type=float, default=0.1)
    p.add_argument('--epochs', type=int, default=10)
    p.add_argument('--batchsize', type=int, default=32)
    p.add_argument('--val-batchsize', type=int, default=64)
    p.add_argument('--val-split', type=float, default=0.1)
    p.add_argument('--mean', choices=['pretrained', 'dataset', 'none'],
                   default='pretrained',
                   help="mean subtracted: the pretrained net's (ImageNet for "
                   "AlexNet), the training set's, or none")
    p.add_argument('--loaderjob', type=int, default=2,
                   help='image-loading processes (0: in the main process)')
    p.add_argument('--gpu', type=int, default=-1,
                   help='GPU id (with --communicator: of rank 0 on each '
                   'machine, the others use the next ones); -1 is CPU')
    p.add_argument('--dtype', choices=['float32', 'float16'],
                   default='float32',
                   help='float16: mixed precision (float16 weights and '
                   'activations, float32 master weights, dynamic loss '
                   'scaling) for GPUs; model files stay float32')
    p.add_argument('--communicator',
                   help="ChainerMN communicator for mpiexec runs: 'naive' "
                   "(CPU), 'pure_nccl' (GPUs), ...")
    p.add_argument('--out', default='result')
    p.add_argument('--snapshot-interval', type=int, default=500,
                   help='iterations between snapshots, besides one at '
                   'each epoch end')
    p.add_argument('--keep-snapshots', type=int, default=3)
    p.add_argument('--log-interval', type=int, default=10,
                   help='iterations between log lines, besides each '
                   'epoch end (0: epoch ends only)')
    p.add_argument('--resume', help="snapshot file, or 'auto' for the "
                   'latest in --out')
    p.add_argument('--seed', type=int, default=0)
    p.add_argument('--cache-features', action='store_true',
                   help='compute the frozen layers once per image and crop '
                   'and train the head on the cached features')
    p.add_argument('--cache-crops', type=int, default=10,
                   help='random crops (and mirrors) cached per training '
                   'image; each epoch uses one (default: %(default)s)')
    p.add_argument('--trunk-backend', choices=['auto', 'opencv', 'chainer'],
                   default='auto', help='what runs the frozen leading '
                   "layers on the CPU: OpenCV's dnn (exact, several times "
                   "faster; 'auto' uses it when installed) or Chainer")
    p.add_argument('--lr-find', action='store_true',
                   help='run a learning-rate range test, plot it, and stop')
    return p


@command
def main(argv=None):
    args = build_parser().parse_args(argv)
    keep_freed_memory()
    if args.dtype == 'float16' and args.gpu < 0:
        print('note: --dtype float16 on the CPU is slow (NumPy has no '
              'float16 matrix multiply); it is meant for GPUs',
              file=sys.stderr)
    if args.lr_find:
        if args.communicator:
            raise FinetuneError('--lr-find runs in one process: drop '
                                '--communicator')
        find_lr(args)
    else:
        train(args)


if __name__ == '__main__':
    sys.exit(main())
