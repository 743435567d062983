"""Everything a fine-tuning run is told, as one typed dataclass.

:class:`TrainConfig` is the single source of the training options: each
field carries its default, its one-line doc and its command-line flags,
and ``python -m finetune.train`` builds its parser from these fields
(:func:`add_config_arguments`) and maps the parsed arguments back with
:func:`config_from_args`, nothing else. A Python caller makes a
``TrainConfig`` and passes it to :func:`finetune.fit`.

The fields are declared in one dataclass per stage (:data:`GROUPS`:
:class:`DatasetOptions`, :class:`SurgeryOptions`, :class:`SolverOptions`,
:class:`ScheduleOptions`, :class:`LoadingOptions`,
:class:`ScaleOutOptions`, :class:`OutputOptions`), which are also the
groups of ``--help``; ``TrainConfig`` is all of them, flat, and hands each
stage its own group (``config.solver``, ...).
"""
import argparse
import contextlib
import dataclasses
import numbers
import os
from typing import Optional

from finetune.common.cli import Range
from finetune.common.cli import TTA_HELP
from finetune.common.cli import device_id
from finetune.common.cli import fraction
from finetune.common.cli import non_negative_float
from finetune.common.cli import non_negative_int
from finetune.common.cli import positive_float
from finetune.common.cli import positive_int
from finetune.common.cli import refusal
from finetune.common.errors import FinetuneError
from finetune.training.layer_spec import layer_spec_help
from finetune.weights.registry import REGISTRY

#: NumPy's seeds are 32-bit
SEED_RANGE = Range(int, low=0, high=2 ** 32 - 1)
MOMENTUM_RANGE = Range(float, low=0, high=1, high_open=True)
DEVICE_RANGE = Range(int, low=-1)


def option(default, doc, *flags, values=None, path=False,
           **argparse_kwargs):
    """A dataclass field with its command-line description in metadata.

    ``values`` is the :class:`~finetune.common.cli.Range` of a number
    field (its kind, ``int`` or ``float``, parses the option; the range
    is checked by :func:`check_config`, so a bad value is one line
    whether it came from the command line or from Python); ``path`` marks
    a file or folder field (``os.PathLike`` accepted).
    """
    if values is not None:
        argparse_kwargs.setdefault('type', values.kind)
    return dataclasses.field(default=default, metadata=dict(
        doc=doc, flags=flags, values=values, path=path,
        argparse=argparse_kwargs))


@dataclasses.dataclass
class DatasetOptions:
    """The images and how they are split: read by the lists stage
    (:mod:`finetune.training.run_dir`).

    ``TrainConfig.dataset`` is this group of a run's options; its
    ``--help`` group is 'data'.
    """
    data: str = option(None, 'folder with one sub-folder of images per class',
                       path=True, required=True)
    image_list: Optional[str] = option(
        None, "file of 'path label' lines listing the images instead of "
        'sub-folders (paths relative to --data)', '--label-file', path=True,
        metavar='FILE')
    val_split: float = option(
        0.1, 'fraction of each class held out for validation, in [0, 1); 0: '
        'no validation', values=fraction)
    mean: str = option(
        'pretrained', "mean subtracted: the pretrained net's (ImageNet for "
        "AlexNet), the training set's ('dataset'), or 'none'",
        choices=['pretrained', 'dataset', 'none'])


@dataclasses.dataclass
class SurgeryOptions:
    """The pretrained network and what is replaced, frozen and unfrozen:
    read by :func:`~finetune.weights.load.load_pretrained` (the network)
    and :func:`~finetune.training.recipe.surgery_plan` (the layers).

    ``TrainConfig.surgery`` is this group of a run's options; its
    ``--help`` group is 'pretrained network and surgery'.
    """
    pretrained: str = option(
        'alexnet', 'registry name (%s), .caffemodel or converted .npz'
        % ', '.join(sorted(REGISTRY)), path=True)
    pretrained_dir: Optional[str] = option(
        None, 'where python -m finetune.fetch put registry weights '
        '(default: the cache, $FINETUNE_CACHE/weights or '
        '~/.cache/finetune/weights)', path=True)
    prototxt: Optional[str] = option(
        None, 'deploy prototxt for a caffemodel that is not in the registry '
        'and not AlexNet', path=True)
    freeze: str = option(
        'none', 'layers not trained, a layer spec: ' + layer_spec_help())
    replace: str = option(
        'auto', "layers re-initialized as the new head, a layer spec or "
        "'auto': the registry model's recommended head (%s), else fc6-fc8 "
        "on any BVLC AlexNet or CaffeNet and the net's last InnerProduct "
        "(the last Convolution without one) on others"
        % ', '.join('%s on %s' % (entry.head, name) for name, entry
                    in sorted(REGISTRY.items()) if entry.head != 'auto'))
    unfreeze: Optional[str] = option(
        None, 'deeper fine-tuning: after --warmup-epochs of head-only '
        'training, also train the trunk from this layer on (e.g. '
        "open_nsfw's conv_stage3_block0_proj_shortcut) at --lr x "
        '--trunk-lr-mult; the layers before it stay frozen (instead of '
        '--freeze)')


@dataclasses.dataclass
class SolverOptions:
    """The optimizer: read by
    :func:`~finetune.training.solver.make_optimizer`.

    ``TrainConfig.solver`` is this group of a run's options; its
    ``--help`` group is 'solver'.
    """
    trunk_lr_mult: float = option(
        0.1, 'learning-rate multiplier of the trunk layers --unfreeze '
        'trains, > 0', values=positive_float)
    head_lr_mult: float = option(
        10.0, 'learning-rate multiplier of the new head (0: not trained)',
        values=non_negative_float)
    lr: float = option(0.001, 'base learning rate', values=positive_float)
    momentum: float = option(0.9, 'SGD momentum, in [0, 1)',
                             values=MOMENTUM_RANGE)
    weight_decay: float = option(5e-4, 'L2 weight decay',
                                 values=non_negative_float)
    dtype: str = option(
        'float32', 'float16: mixed precision (float16 weights and '
        'activations, float32 master weights, dynamic loss scaling) for '
        'GPUs; model files stay float32',
        choices=['float32', 'float16'])


@dataclasses.dataclass
class ScheduleOptions:
    """How long and at which rates: read by
    :func:`~finetune.training.schedule.add_lr_schedule` and the trainer's
    stop trigger.

    ``TrainConfig.schedule`` is this group of a run's options; its
    ``--help`` group is 'schedule'.
    """
    epochs: int = option(10, 'epochs to train', '-E', values=positive_int)
    time_limit: float = option(
        0.0, 'stop training after this many seconds (wall clock, at the next '
        'iteration) even before --epochs; 0: no limit',
        values=non_negative_float)
    warmup_epochs: int = option(
        0, 'with --unfreeze: epochs of head-only training before the trunk '
        'trains', values=non_negative_int)
    lr_schedule: str = option(
        'step', "'step': x--lr-gamma every --lr-step epochs; 'cosine': half "
        'a cosine from --lr to 0 over the epochs after --warmup-epochs',
        choices=['step', 'cosine'])
    lr_step: int = option(0, 'multiply lr by --lr-gamma every N epochs (0: '
                          'never)', values=non_negative_int)
    lr_gamma: float = option(0.1, 'factor of each --lr-step',
                             values=positive_float)
    lr_find: bool = option(False, 'run a learning-rate range test, plot it, '
                           'and stop')


@dataclasses.dataclass
class LoadingOptions:
    """Batches and what feeds them (images, or the cached features of the
    frozen layers): read by :func:`~finetune.training.inputs.make_inputs`.

    ``TrainConfig.loading`` is this group of a run's options; its
    ``--help`` group is 'data loading and feature cache'.
    """
    batchsize: int = option(32, 'training images per batch (per process)',
                            '-B', '--batch', values=positive_int)
    val_batchsize: int = option(64, 'validation images per batch',
                                values=positive_int)
    loaderjob: int = option(2, 'image-loading processes (0: in the main '
                            'process)', '-j', values=non_negative_int)
    seed: int = option(0, 'seed of the split, batch order, crops and '
                       'dropout', values=SEED_RANGE)
    cache_features: bool = option(
        False, 'compute the frozen layers once per image and crop and train '
        'the head on the cached features')
    cache_crops: int = option(
        10, 'random crops (and mirrors) cached per training image; each '
        'epoch uses one', values=positive_int)


@dataclasses.dataclass
class ScaleOutOptions:
    """Where the run computes: the device, the ChainerMN communicator and
    what runs the frozen trunk on the CPU.

    ``TrainConfig.scale_out`` is this group of a run's options; its
    ``--help`` group is 'device and scale-out'.
    """
    device: int = option(
        -1, 'GPU number (with --communicator: of rank 0 on each machine, '
        "the others use the next ones); -1 is the CPU; Chainer's "
        "'@numpy'/'@cupy:N' also work", '-d', '--gpu',
        values=DEVICE_RANGE, type=device_id,
        metavar='DEVICE')
    communicator: Optional[str] = option(
        None, "ChainerMN communicator for mpiexec runs: 'naive' (CPU), "
        "'pure_nccl' (GPUs), ...")
    trunk_backend: str = option(
        'auto', "what runs the frozen leading layers on the CPU: OpenCV's "
        "dnn (exact, several times faster; 'auto' uses it when installed) "
        'or Chainer', choices=['auto', 'opencv', 'chainer'])


@dataclasses.dataclass
class OutputOptions:
    """What the run writes, and from which snapshot it resumes: read by
    :mod:`~finetune.training.run_dir`,
    :func:`~finetune.training.extensions.add_training_extensions` and
    :func:`~finetune.training.report.evaluate_and_report`.

    ``TrainConfig.output`` is this group of a run's options; its
    ``--help`` group is 'output and snapshots'.
    """
    out: str = option('result', 'output folder', '-o',
                      path=True)
    resume: Optional[str] = option(
        None, "snapshot file, or 'auto' (also a bare --resume, as predict "
        "takes it) for the latest in --out", '-r', path=True, nargs='?',
        const='auto')
    overwrite: bool = option(
        False, 'start anew in an --out that holds an earlier run\'s '
        'snapshots (they are deleted)')
    snapshot_interval: int = option(
        500, 'iterations between snapshots, besides one at each epoch end',
        values=non_negative_int)
    keep_snapshots: int = option(3, 'snapshots kept', values=positive_int)
    log_interval: int = option(
        10, 'iterations between log lines, besides each epoch end (0: epoch '
        'ends only)', values=non_negative_int)
    tta: bool = option(False, TTA_HELP + ', in the final evaluation report')


#: The ``--help`` groups, each the options one stage reads.
GROUPS = {
    'data': DatasetOptions,
    'pretrained network and surgery': SurgeryOptions,
    'solver': SolverOptions,
    'schedule': ScheduleOptions,
    'data loading and feature cache': LoadingOptions,
    'device and scale-out': ScaleOutOptions,
    'output and snapshots': OutputOptions,
}


def group_view(group):
    """A property of :class:`TrainConfig`: a copy of its ``group`` fields,
    as a ``group`` instance."""
    def view(config):
        return group(**{field.name: getattr(config, field.name)
                        for field in dataclasses.fields(group)})
    view.__doc__ = ':class:`%s`: a copy of these options of the run.' \
        % group.__name__
    return property(view)


@dataclasses.dataclass
class TrainConfig(OutputOptions, ScaleOutOptions, LoadingOptions,
                  ScheduleOptions, SolverOptions, SurgeryOptions,
                  DatasetOptions):
    """The options of one fine-tuning run (``python -m finetune.train``).

    Every field is a command-line option of the same name (``_`` -> ``-``);
    see each field's ``doc`` in ``dataclasses.fields(TrainConfig)`` or
    ``python -m finetune.train --help``. ``data`` is the only one without
    a default.

    The fields are grouped by the stage that reads them (:data:`GROUPS`,
    the groups of ``--help``): ``config.solver`` is its
    :class:`SolverOptions`, and so on, and each stage's builder takes its
    group (e.g. :func:`~finetune.training.solver.make_optimizer` takes
    ``config.solver``), values of other stages as plain arguments.
    Only :func:`finetune.fit` (the root), :func:`check_config` and the
    run's identity (:func:`~finetune.training.run_dir.run_identity`) read
    the whole config.
    """
    dataset = group_view(DatasetOptions)
    surgery = group_view(SurgeryOptions)
    solver = group_view(SolverOptions)
    schedule = group_view(ScheduleOptions)
    loading = group_view(LoadingOptions)
    scale_out = group_view(ScaleOutOptions)
    output = group_view(OutputOptions)

    def __post_init__(self):
        check_config(self)


def option_flag(name):
    """The command-line flag of the TrainConfig field ``name``."""
    return '--' + name.replace('_', '-')


def check_config(config):
    """Refuse a field of the wrong type or an impossible value, before
    anything is read or written; path fields given as ``os.PathLike``
    (``pathlib.Path``) become ``str`` and ints in float fields floats.

    The command line's values are checked here too (each field's
    ``values`` range and ``choices``), so the CLI and the Python API
    refuse the same values with the same line.

    Raises:
        FinetuneError: one line naming the option (the field of the same
            name) and what it must be, e.g. ``--batchsize '32': must be
            an integer >= 1``.
    """
    if config.data is None:
        raise FinetuneError('--data: required (a folder with one '
                            'sub-folder of images per class)')
    for field in dataclasses.fields(config):
        value = getattr(config, field.name)
        what, normalized = _field_value(field, value)
        if what:
            raise FinetuneError(refusal(option_flag(field.name), value,
                                        what))
        setattr(config, field.name, normalized)
    check_recipe(config)


def check_recipe(config):
    """Refuse deeper fine-tuning options that do not go together (one
    line naming both options), before anything is read: the layer
    ``--unfreeze`` names is checked once the net is loaded
    (:func:`finetune.training.recipe.frozen_before`).

    ``--unfreeze LAYER`` freezes the layers before ``LAYER`` itself, so it
    replaces ``--freeze``; ``--warmup-epochs`` and ``--trunk-lr-mult``
    only mean something with it.
    """
    if config.unfreeze is None:
        default = TrainConfig.__dataclass_fields__['trunk_lr_mult'].default
        if config.warmup_epochs:
            raise FinetuneError('--warmup-epochs %d: needs --unfreeze LAYER '
                                '(the trunk layers trained after the '
                                'warm-up)' % config.warmup_epochs)
        if config.trunk_lr_mult != default:
            raise FinetuneError('--trunk-lr-mult %g: needs --unfreeze LAYER '
                                '(the trunk layers it applies to)'
                                % config.trunk_lr_mult)
        return
    if config.freeze.strip() != 'none':
        raise FinetuneError('--unfreeze %s: the layers before it stay '
                            'frozen; drop --freeze %s'
                            % (config.unfreeze, config.freeze))
    if config.warmup_epochs >= config.epochs:
        raise FinetuneError('--warmup-epochs %d: must be less than --epochs '
                            '%d (the trunk would never train)'
                            % (config.warmup_epochs, config.epochs))


def _field_value(field, value):
    """``(what it must be, value)``: None when ``value`` is right for
    ``field``, and the value normalized."""
    meta = field.metadata
    optional = field.type == Optional[str]
    if value is None and optional:
        return None, value
    if field.type is bool:
        return (None if isinstance(value, bool) else 'True or False'), value
    if meta['values'] is not None:
        return _number_value(meta['values'], value)
    if meta['path'] and isinstance(value, os.PathLike):
        value = os.fspath(value)
    if not isinstance(value, str) or not value:
        return '%s%s' % ('a path' if meta['path'] else 'a non-empty string',
                         ' or None' if optional else ''), value
    choices = meta['argparse'].get('choices')
    if choices and value not in choices:
        return 'one of %s' % ', '.join(map(repr, choices)), value
    return None, value


def _number_value(values, value):
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        value = int(value)
    if values.kind is float and isinstance(value, numbers.Real) and \
            not isinstance(value, bool):
        with contextlib.suppress(OverflowError):  # 10 ** 400 stays an int
            value = float(value)
    return values.problem(value), value


def add_config_arguments(parser):
    """Add one option per :class:`TrainConfig` field, grouped by stage."""
    for title, group in GROUPS.items():
        add_group_arguments(parser.add_argument_group(title), group)


def add_group_arguments(parser, group):
    """Add one option per field of the options dataclass ``group``."""
    for field in dataclasses.fields(group):
        meta = field.metadata
        kwargs = dict(meta['argparse'])
        kwargs['dest'] = field.name
        kwargs['help'] = meta['doc'] + (
            '' if field.default is None or field.type is bool
            else ' (default: %(default)s)')
        if field.type is bool:
            kwargs['action'] = 'store_true'
        else:
            kwargs.setdefault('type', str)
            kwargs['default'] = field.default
        flags = [f for f in meta['flags'] if not f.startswith('--')]
        flags += [option_flag(field.name)]
        flags += [f for f in meta['flags'] if f.startswith('--')]
        parser.add_argument(*flags, **kwargs)


def config_from_args(args):
    """The :class:`TrainConfig` of parsed arguments."""
    return TrainConfig(**{field.name: getattr(args, field.name)
                          for field in dataclasses.fields(TrainConfig)})


def build_parser(prog='python -m finetune.train', description=None):
    """The parser of ``python -m finetune.train``."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    add_config_arguments(parser)
    return parser
