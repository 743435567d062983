"""Everything a fine-tuning run is told, as one typed dataclass.

:class:`TrainConfig` is the single source of the training options: each
field carries its default, its one-line doc, its command-line flags and its
``--help`` group, and ``python -m finetune.train`` builds its parser from
these fields (:func:`add_config_arguments`) and maps the parsed arguments
back with :func:`config_from_args`, nothing else. A Python caller makes a
``TrainConfig`` and passes it to :func:`finetune.fit`.
"""
import argparse
import dataclasses
from typing import Optional

from finetune.common.cli import device_id
from finetune.common.errors import FinetuneError

GROUPS = ('data', 'pretrained network and surgery', 'solver', 'schedule',
          'data loading', 'device and scale-out', 'output and snapshots',
          'speed')


def option(default, doc, *flags, group, **argparse_kwargs):
    """A dataclass field with its command-line description in metadata."""
    return dataclasses.field(default=default, metadata=dict(
        doc=doc, flags=flags, group=group, argparse=argparse_kwargs))


@dataclasses.dataclass
class TrainConfig:
    """The options of one fine-tuning run (``python -m finetune.train``).

    Every field is a command-line option of the same name (``_`` -> ``-``);
    see each field's ``doc`` in ``dataclasses.fields(TrainConfig)`` or
    ``python -m finetune.train --help``. ``data`` is the only one without
    a default.
    """
    data: str = option(None, 'folder with one sub-folder of images per class',
                       group='data', required=True)
    label_file: Optional[str] = option(
        None, "'path label' lines instead of sub-folders (paths relative to "
        '--data)', group='data')
    val_split: float = option(
        0.1, 'fraction of each class held out for validation, in [0, 1); 0: '
        'no validation', group='data')
    mean: str = option(
        'pretrained', "mean subtracted: the pretrained net's (ImageNet for "
        "AlexNet), the training set's ('dataset'), or 'none'", group='data',
        choices=['pretrained', 'dataset', 'none'])
    pretrained: str = option(
        'alexnet', 'registry name (alexnet, flickr_style, open_nsfw), '
        '.caffemodel or converted .npz', group='pretrained network and surgery')
    pretrained_dir: str = option(
        'pretrained', 'where registry weights are downloaded by '
        'python -m finetune.fetch', group='pretrained network and surgery')
    prototxt: Optional[str] = option(
        None, 'deploy prototxt for a caffemodel that is not in the registry '
        'and not AlexNet', group='pretrained network and surgery')
    freeze: str = option(
        'none', "layers not trained: 'conv1-conv5', 'conv1,conv2', 'none'",
        group='pretrained network and surgery')
    replace: str = option(
        'auto', "layers re-initialized as the new head; 'auto': fc6-fc8 on "
        'AlexNet/CaffeNet, the last InnerProduct on other nets (the last '
        'Convolution without one); Caffe Flickr-Style: fc8',
        group='pretrained network and surgery')
    head_lr_mult: float = option(10.0, 'learning-rate multiplier of the new '
                                 'head', group='solver')
    lr: float = option(0.001, 'base learning rate', group='solver')
    momentum: float = option(0.9, 'SGD momentum', group='solver')
    weight_decay: float = option(5e-4, 'L2 weight decay', group='solver')
    dtype: str = option(
        'float32', 'float16: mixed precision (float16 weights and '
        'activations, float32 master weights, dynamic loss scaling) for '
        'GPUs; model files stay float32', group='solver',
        choices=['float32', 'float16'])
    epochs: int = option(10, 'epochs to train', '-E', group='schedule')
    time_limit: float = option(
        0.0, 'stop training after this many seconds (wall clock, at the next '
        'iteration) even before --epochs; 0: no limit', group='schedule')
    lr_step: int = option(0, 'multiply lr by --lr-gamma every N epochs (0: '
                          'never)', group='schedule')
    lr_gamma: float = option(0.1, 'factor of each --lr-step', group='schedule')
    lr_find: bool = option(False, 'run a learning-rate range test, plot it, '
                           'and stop', group='schedule')
    batchsize: int = option(32, 'training images per batch (per process)',
                            '-B', group='data loading')
    val_batchsize: int = option(64, 'validation images per batch',
                                group='data loading')
    loaderjob: int = option(2, 'image-loading processes (0: in the main '
                            'process)', '-j', group='data loading')
    seed: int = option(0, 'seed of the split, batch order, crops and '
                       'dropout', group='data loading')
    device: int = option(
        -1, 'GPU number (with --communicator: of rank 0 on each machine, '
        "the others use the next ones); -1 is the CPU; Chainer's "
        "'@numpy'/'@cupy:N' also work", '-d', '--gpu',
        group='device and scale-out', type=device_id)
    communicator: Optional[str] = option(
        None, "ChainerMN communicator for mpiexec runs: 'naive' (CPU), "
        "'pure_nccl' (GPUs), ...", group='device and scale-out')
    out: str = option('result', 'output folder', '-o',
                      group='output and snapshots')
    resume: Optional[str] = option(
        None, "snapshot file, or 'auto' for the latest in --out", '-r',
        group='output and snapshots')
    overwrite: bool = option(
        False, 'start anew in an --out that holds an earlier run\'s '
        'snapshots (they are deleted)', group='output and snapshots')
    snapshot_interval: int = option(
        500, 'iterations between snapshots, besides one at each epoch end',
        group='output and snapshots')
    keep_snapshots: int = option(3, 'snapshots kept', group='output and '
                                 'snapshots')
    log_interval: int = option(
        10, 'iterations between log lines, besides each epoch end (0: epoch '
        'ends only)', group='output and snapshots')
    cache_features: bool = option(
        False, 'compute the frozen layers once per image and crop and train '
        'the head on the cached features', group='speed')
    cache_crops: int = option(
        10, 'random crops (and mirrors) cached per training image; each '
        'epoch uses one', group='speed')
    trunk_backend: str = option(
        'auto', "what runs the frozen leading layers on the CPU: OpenCV's "
        "dnn (exact, several times faster; 'auto' uses it when installed) "
        'or Chainer', group='speed', choices=['auto', 'opencv', 'chainer'])

    def __post_init__(self):
        check_config(self)


def option_flag(name):
    """The command-line flag of the TrainConfig field ``name``."""
    return '--' + name.replace('_', '-')


def check_config(config):
    """Refuse impossible values before anything is read or written.

    Raises:
        FinetuneError: one line naming the option and what is wrong.
    """
    if config.data is None:
        raise FinetuneError('--data: required (a folder with one sub-folder '
                            'of images per class)')
    rules = [
        ('val_split', 0 <= config.val_split < 1, 'must be in [0, 1)'),
        ('batchsize', config.batchsize >= 1, 'must be >= 1'),
        ('val_batchsize', config.val_batchsize >= 1, 'must be >= 1'),
        ('epochs', config.epochs >= 1, 'must be >= 1'),
        ('cache_crops', config.cache_crops >= 1, 'must be >= 1'),
        ('loaderjob', config.loaderjob >= 0, 'must be >= 0'),
        ('lr', config.lr > 0, 'must be > 0'),
        ('time_limit', config.time_limit >= 0, 'must be >= 0'),
        ('lr_step', config.lr_step >= 0, 'must be >= 0'),
        ('snapshot_interval', config.snapshot_interval >= 0,
         'must be >= 0'),
        ('keep_snapshots', config.keep_snapshots >= 1, 'must be >= 1'),
        ('log_interval', config.log_interval >= 0, 'must be >= 0'),
        ('device', config.device >= -1, 'must be a GPU number or -1'),
    ]
    for name, ok, what in rules:
        if not ok:
            raise FinetuneError('%s %s: %s' % (option_flag(name),
                                               getattr(config, name), what))


def add_config_arguments(parser):
    """Add one option per :class:`TrainConfig` field, grouped by stage."""
    groups = {name: parser.add_argument_group(name) for name in GROUPS}
    for field in dataclasses.fields(TrainConfig):
        meta = field.metadata
        kwargs = dict(meta['argparse'])
        kwargs['dest'] = field.name
        kwargs['help'] = meta['doc'] + (
            '' if field.default is None or field.type is bool
            else ' (default: %(default)s)')
        if field.type is bool:
            kwargs['action'] = 'store_true'
        else:
            kwargs.setdefault('type', _argparse_type(field.type))
            kwargs['default'] = field.default
        flags = [f for f in meta['flags'] if not f.startswith('--')]
        flags += [option_flag(field.name)]
        flags += [f for f in meta['flags'] if f.startswith('--')]
        groups[meta['group']].add_argument(*flags, **kwargs)


def _argparse_type(annotation):
    for kind in (int, float, str):
        if annotation is kind or annotation == Optional[kind]:
            return kind
    raise TypeError(annotation)


def config_from_args(args):
    """The :class:`TrainConfig` of parsed arguments."""
    return TrainConfig(**{field.name: getattr(args, field.name)
                          for field in dataclasses.fields(TrainConfig)})


def build_parser(prog='python -m finetune.train', description=None):
    """The parser of ``python -m finetune.train``."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    add_config_arguments(parser)
    return parser
