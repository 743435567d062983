"""Fine-tuning as one function: ``finetune.fit(TrainConfig(...))``.

Read top to bottom like Chainer's ``examples/imagenet`` ``main()``:
:func:`fit` loads the pretrained net, prepares the data lists, performs
the surgery, builds the model, optimizer, iterators and trainer, runs it
and writes the final model and evaluation report. Every step is a plain
function of plain arguments; where Chainer needs an order (dtype before
``optimizer.setup``, ``disable_update`` after it) one function does both.
"""
import contextlib
import dataclasses
import os
import sys
import time
from typing import Optional

import chainer
import numpy as np
from chainer.training import extensions

from finetune.common.errors import FinetuneError
from finetune.common.fileio import naming_write_errors
from finetune.data import folder
from finetune.data.datasets import LabeledImageDataset
from finetune.data.feature_cache import CachedCropConverter
from finetune.data.feature_cache import CachedFeatureDataset
from finetune.data.feature_cache import cached_features
from finetune.data.loader import make_iterator
from finetune.common.allocator import keep_freed_memory
from finetune.data.loader import use_forkserver
from finetune.data.transforms import CaffePreprocess
from finetune.inference.batch import predict_paths
from finetune.inference.predictor import Predictor
from finetune.inference.tta import crops_problem
from finetune.models.model_file import save_model
from finetune.weights.load import load_pretrained
from finetune.weights.registry import converted_from
from finetune.training import report
from finetune.training.config import check_config
from finetune.training.distributed import rank_device
from finetune.training.distributed import ranks_for
from finetune.training.extensions import Classifier
from finetune.training.extensions import EpochOrIntervalTrigger
from finetune.training.extensions import EpochsOrTimeLimit
from finetune.training.extensions import RandomCropConverter
from finetune.training.extensions import SNAPSHOT_PREFIX
from finetune.training.extensions import SaveBestModel
from finetune.training.extensions import SeededUpdater
from finetune.training.extensions import SnapshotWriter
from finetune.training.extensions import StopOnSigterm
from finetune.training.extensions import latest_snapshot
from finetune.training.lr_find import lr_range_test
from finetune.training import recipe
from finetune.training.schedule import add_lr_schedule
from finetune.training.run_dir import check_run_dir
from finetune.training.run_dir import exclusive_run
from finetune.training.run_dir import prepare_run_dir
from finetune.training.run_dir import resume_snapshot
from finetune.training.snapshot import load_snapshot
from finetune.training.lr_find import plot_lr_find
from finetune.training.solver import CaffeSGD
from finetune.training.solver import set_caffe_lr_policy
from finetune.training.surgery import FineTuneNet
from finetune.training.surgery import freeze_layers
from finetune.training.surgery import check_freeze_set
from finetune.training.surgery import frozen_cut
from finetune.training.surgery import parse_head_spec
from finetune.training.layer_spec import parse_layer_spec
from finetune.training.surgery import replace_head
from finetune.training.surgery import set_param_dtype

MODEL_BEST = 'model_best.npz'
MODEL_FINAL = 'model_final.npz'


@dataclasses.dataclass(frozen=True)
class FitResult:
    """What :func:`fit` produced.

    Attributes:
        out (str): the output folder.
        model_final (str): path of ``model_final.npz``.
        model_best (str or None): path of ``model_best.npz`` (None without
            validation images).
        metrics (dict or None): the final validation report's summary
            (:func:`finetune.training.report.write_evaluation_report`):
            ``n_examples``, ``n_classes``, ``top1_accuracy``,
            ``top5_accuracy`` (top-``top5_k``, k clipped to the classes),
            ``mean_class_accuracy`` (fractions in [0, 1]),
            ``confused_pairs``, ``out_dir``, ``files``; None without
            validation images.
        seconds (dict): wall-clock seconds of each stage: ``scan`` (listing
            and checking the images), ``features`` (the loaders, and the
            feature cache when one is built), ``training`` (the trainer,
            with its per-epoch validation) and ``evaluation`` (the final
            report).
    """
    out: str
    model_final: str
    model_best: Optional[str]
    metrics: Optional[dict]
    seconds: dict


@dataclasses.dataclass
class RunInputs:
    """The iterators and what consumes them (built by :func:`make_inputs`).

    Attributes:
        train_iter: training iterator (images or cached features).
        converter: batch -> arrays on the device (random crops, or one of
            the cached crops).
        val_iter: validation iterator, None without validation images.
        eval_model: the Classifier evaluated each epoch (the head alone on
            cached centre-crop features when the trunk is frozen).
        eval_converter: the evaluator's batch converter.
    """
    train_iter: object
    converter: object
    val_iter: object
    eval_model: object
    eval_converter: object

    def finalize(self):
        """Stop the loader processes."""
        for iterator in (self.train_iter, self.val_iter):
            if iterator is not None:
                iterator.finalize()


def choose_preprocess(preprocess, mean, prepared_mean):
    """The pretrained net's preprocessing with the ``--mean`` choice."""
    if mean == 'pretrained':
        return preprocess
    means = {'dataset': prepared_mean, 'none': None}
    return CaffePreprocess(preprocess.size, preprocess.crop_size,
                           means[mean], preprocess.scale,
                           preprocess.channels)


def resumes_from_lists(config):
    """Whether the run reads its lists from ``--out`` (a resumption of a
    run that wrote them) rather than scanning ``--data``."""
    return bool(config.resume) and os.path.exists(
        os.path.join(config.out, folder.TRAIN_FILE))


def check_data(config):
    """Refuse a missing, empty or one-class ``--data`` folder (or a bad
    ``--image-list``) that the run would scan, before ``--out`` is touched
    (listing the folder twice costs little next to verifying every
    image)."""
    if not resumes_from_lists(config):
        folder.list_dataset(config.data, config.image_list,
                            {'--out': config.out})


def prepare_lists(config, channels, size):
    """(train, val, class_names, mean): the lists in ``--out`` when
    resuming, else built from ``--data``."""
    train_txt = os.path.join(config.out, folder.TRAIN_FILE)
    if resumes_from_lists(config):
        train, names = folder.read_image_list(train_txt, config.data)
        val, _ = folder.read_image_list(
            os.path.join(config.out, folder.VAL_FILE), config.data,
            allow_empty=True)
        mean_path = os.path.join(config.out, folder.MEAN_FILE)
        mean = folder.load_mean(mean_path) if os.path.exists(
            mean_path) else None
        return train, val, names, mean
    prepared = folder.prepare_dataset(
        config.data, config.out, val_split=config.val_split,
        seed=config.seed, image_list=config.image_list,
        compute_mean=config.mean == 'dataset', channels=channels, size=size,
        jobs=max(1, config.loaderjob))
    return prepared.train, prepared.val, prepared.class_names, prepared.mean


def surgery_plan(config, pretrained, entry=None):
    """(head, frozen): the layer names ``--replace`` and ``--freeze`` name
    (``--replace auto``: the registry ``entry``'s recommended head when
    there is one, e.g. AlexNet's fc6-fc8).

    Checked against the network before any image is scanned.

    Raises:
        FinetuneError: an unknown layer, or a layer both replaced and
            frozen, or ``--cache-features`` without a frozen trunk.
    """
    try:
        head = parse_head_spec(config.replace, pretrained, entry)
    except FinetuneError as e:
        raise FinetuneError('--replace: %s' % e) from None
    try:
        frozen = recipe.frozen_before(pretrained, config.unfreeze) \
            if config.unfreeze else parse_layer_spec(config.freeze,
                                                     pretrained)
    except FinetuneError as e:
        raise FinetuneError(str(e) if config.unfreeze else
                            '--freeze: %s' % e) from None
    overlap = set(head) & set(frozen)
    if overlap:
        raise FinetuneError('layers both replaced and frozen: %s'
                            % ', '.join(sorted(overlap)))
    check_freeze_set(pretrained, frozen)
    if config.cache_features and not frozen_cut(pretrained, frozen):
        raise FinetuneError('--cache-features needs frozen leading '
                            'layers, e.g. --freeze conv1-conv5')
    return head, frozen


def build_networks(pretrained, meta, head, frozen, n_classes, config):
    """(train_net, eval_net): FineTuneNets sharing one network after
    surgery. The training net reads cached features with
    ``--cache-features``; a frozen trunk is always evaluated on cached
    centre-crop features (``eval_net`` reads features), else ``eval_net``
    is ``train_net``."""
    net = replace_head(pretrained, meta, head, n_classes)
    prefix = frozen_cut(net, frozen)
    train_net = FineTuneNet(net, prefix, from_features=config.cache_features,
                            trunk_backend=config.trunk_backend)
    if not prefix:
        return train_net, train_net
    return train_net, FineTuneNet(net, prefix, from_features=True,
                                  trunk_backend=config.trunk_backend)


def make_model(net, dtype, device):
    """Classifier over ``net``, its parameters cast to ``dtype`` and sent
    to ``device``."""
    set_param_dtype(net, np.dtype(dtype))
    model = Classifier(net)
    model.to_device(device)
    device.use()
    return model


def make_optimizer(model, config, head, frozen, ranks):
    """CaffeSGD set up on ``model`` with Caffe's multipliers and the frozen
    layers' updates disabled; with ``--dtype float16`` it keeps float32
    master weights and scales the loss dynamically."""
    solver = CaffeSGD(lr=config.lr, momentum=config.momentum)
    if config.dtype == 'float16':
        solver.use_fp32_update()
        solver.loss_scaling()
    optimizer = ranks.optimizer(solver)
    optimizer.setup(model)
    network = model.predictor.net
    set_caffe_lr_policy(network, head, config.weight_decay,
                        config.head_lr_mult)
    freeze_layers(network, frozen)
    recipe.scale_trunk_rates(network, recipe.trunk_layers(
        network, head, frozen) if config.unfreeze else [],
        config.trunk_lr_mult)
    return optimizer


def uncropped(root, entries, preprocess):
    """Images resized but not cropped (crops are drawn per step)."""
    p = preprocess
    return LabeledImageDataset(root, entries, CaffePreprocess(
        p.size, None, p.mean, p.scale, p.channels))


def feature_cache(config, split, net, entries, preprocess, mode, device,
                  ranks):
    """Path of the frozen-prefix features of ``entries`` (rank 0 builds
    it; the others wait and read the same file)."""
    path = None
    if ranks.is_root:
        network = net.net
        path, built = cached_features(
            os.path.join(config.out, 'feature_cache'), split, network,
            network.layer_names[:net.n_frozen_layers], net.features,
            config.data,
            entries, uncropped(config.data, entries, preprocess),
            preprocess, mode, device, config.val_batchsize,
            config.loaderjob, config.cache_crops)
        print('%s features: %s %s' % (split, 'cached in' if built
                                      else 'reusing', path), file=sys.stderr)
    return ranks.bcast(path)


def make_inputs(config, model, eval_model, train_list, val_list,
                preprocess, device, ranks):
    """The training and validation iterators (see :class:`RunInputs`)."""
    net = model.predictor
    if config.cache_features:
        dataset = CachedFeatureDataset(
            feature_cache(config, 'train', net, train_list, preprocess,
                          'random', device, ranks),
            [label for _, label in train_list])
        train_iter = make_iterator(ranks.scatter(dataset, config.seed),
                                   config.batchsize, 0, seed=config.seed)
        converter = CachedCropConverter(config.seed)
    else:
        train_iter = make_iterator(ranks.scatter(uncropped(
            config.data, train_list, preprocess), config.seed),
            config.batchsize, config.loaderjob, seed=config.seed)
        converter = RandomCropConverter(preprocess, config.seed)
    if not val_list:
        return RunInputs(train_iter, converter, None, None, None)
    if eval_model is model:
        dataset = LabeledImageDataset(config.data, val_list, preprocess)
        val_iter = make_iterator(ranks.scatter(dataset, config.seed),
                                 config.val_batchsize, config.loaderjob,
                                 repeat=False, shuffle=False)
        return RunInputs(train_iter, converter, val_iter, model,
                         chainer.dataset.concat_examples)
    dataset = CachedFeatureDataset(
        feature_cache(config, 'val', net, val_list, preprocess, 'center',
                      device, ranks),
        [label for _, label in val_list])
    val_iter = make_iterator(ranks.scatter(dataset, config.seed),
                             config.val_batchsize, 0, repeat=False,
                             shuffle=False)
    return RunInputs(train_iter, converter, val_iter, eval_model,
                     CachedCropConverter(0, train=False))


def add_extensions(trainer, config, inputs, device, ranks, save_best,
                   unfreeze=None):
    """Evaluation, LR schedule and the ``--unfreeze`` warm-up
    (``unfreeze``, a :class:`~finetune.training.recipe.Unfreeze`) on every
    rank; logs, plots, progress bar and snapshots on rank 0 only."""
    epoch = (1, 'epoch')
    log_trigger = EpochOrIntervalTrigger(config.log_interval)
    if inputs.val_iter is not None:
        trainer.extend(ranks.evaluator(extensions.Evaluator(
            inputs.val_iter, inputs.eval_model,
            converter=inputs.eval_converter, device=device)), trigger=epoch)
    add_lr_schedule(trainer, config)
    if unfreeze is not None:
        trainer.extend(unfreeze, name='unfreeze')
    trainer.extend(extensions.FailOnNonNumber())
    if not ranks.is_root:
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
        writer=SnapshotWriter(),
        filename=SNAPSHOT_PREFIX + '{.updater.iteration}',
        n_retains=config.keep_snapshots),
        trigger=EpochOrIntervalTrigger(config.snapshot_interval))
    if inputs.val_iter is not None:
        trainer.extend(SaveBestModel(save_best))


def evaluate_and_report(config, net, val, names, preprocess, device):
    """Probabilities on the validation set -> the evaluation report.

    ``net`` is the training FineTuneNet: with a frozen prefix, the images
    go through its own trunk runner (the OpenCV net built for the cache or
    the training steps; building a second one for the whole net held the
    weights twice more) and the head on Chainer. Images that can no longer
    be read are left out of the report.
    """
    if not val:
        return None
    if net.n_frozen_layers:
        net = net.copy(mode='share')  # same weights and trunk runner
        net.from_features = False
        predictor = Predictor(net, names, preprocess, device=device,
                              backend='chainer', tta=config.tta)
    else:
        predictor = Predictor(net.net, names, preprocess, device=device,
                              backend=config.trunk_backend, tta=config.tta)
    rows = predict_paths(predictor, [os.path.join(config.data, p)
                                     for p, _ in val],
                         config.val_batchsize, config.loaderjob,
                         progress=False)
    kept = [(path, label, probs) for (path, label), (_, probs, _)
            in zip(val, rows) if probs is not None]
    return report.write_evaluation_report(
        config.out, np.stack([probs for _, _, probs in kept]),
        np.array([label for _, label, _ in kept]),
        [path for path, _, _ in kept], names)


def run_trainer(trainer, resume, ranks, updater, out):
    """Resume from ``resume`` (a snapshot or 'auto') and run ``trainer``.

    SIGTERM stops it at the next iteration with a snapshot
    (:class:`StopOnSigterm`).

    Raises:
        Preempted: after SIGTERM, the snapshot written (exit status 75).
        FinetuneError: the snapshot does not fit this run, or training
            diverged (the message suggests a lower ``--lr`` and names the
            snapshots there are).
    """
    resume = resume_snapshot(resume, out) if resume else None
    preemption = StopOnSigterm(ranks, extensions.snapshot(
        writer=SnapshotWriter(),
        filename=SNAPSHOT_PREFIX + '{.updater.iteration}'), out)
    trainer.extend(preemption, name='stop_on_sigterm')
    if resume:
        if ranks.is_root:
            print('resuming from %s' % resume, file=sys.stderr)
        load_snapshot(resume, trainer)  # one line when it does not fit
        ranks.resumed(updater.get_optimizer('main'))
    try:
        # no traceback of Chainer's own before the error (a full disk is
        # one line); errors that are not the user's still show theirs.
        # Chainer's log and plots do not name their file: name --out.
        with naming_write_errors(out), preemption.installed():
            trainer.run(show_loop_exception_msg=False)
    except RuntimeError as e:
        if 'diverge' not in str(e):
            raise
        last = latest_snapshot(out)
        raise FinetuneError(
            'training diverged (NaN or inf weights) by iteration %d; lower '
            '--lr (python -m finetune.train ... --lr-find suggests one); %s'
            % (updater.iteration, 'the last snapshot before it is %s' % last
               if last else 'no snapshot was taken before it')) from None


def training_device(device, ranks):
    """Chainer device of this rank (``device`` + the rank's local index)."""
    return rank_device(device, ranks)


@dataclasses.dataclass
class Run:
    """Everything one run is made of (built by :func:`assemble`).

    Attributes:
        model: Classifier over the training FineTuneNet.
        optimizer: set up, Caffe multipliers and frozen layers applied.
        inputs (RunInputs): iterators and converters.
        device: the Chainer device.
        ranks: SingleProcess or MultiNode.
        head, frozen (list of str): replaced and frozen layer names.
        class_names (list of str), preprocess (CaffePreprocess).
        val_list (list): validation entries ``(path, label)``.
        seconds (dict): wall-clock seconds of the stages so far (``scan``,
            ``features``; see :class:`FitResult`).
    """
    model: object
    optimizer: object
    inputs: RunInputs
    device: object
    ranks: object
    head: list
    frozen: list
    class_names: list
    preprocess: CaffePreprocess
    val_list: list
    seconds: dict

    @property
    def network(self):
        """The plain network (AlexNet, CaffeGraph...) being trained."""
        return self.model.predictor.net


@dataclasses.dataclass(frozen=True)
class Pretrained:
    """The pretrained network and the surgery planned on it.

    Attributes:
        network, meta, preprocess: as :func:`load_pretrained` returns.
        head, frozen (list of str): the layers ``--replace`` and
            ``--freeze`` name (checked against the network).
    """
    network: object
    meta: dict
    preprocess: CaffePreprocess
    head: list
    frozen: list


def load_and_plan(config):
    """:class:`Pretrained` for ``config``: the net loaded and the surgery
    checked, before any image is read or anything is written to --out."""
    network, meta, preprocess = load_pretrained(
        config.pretrained, config.prototxt, config.pretrained_dir)
    head, frozen = surgery_plan(config, network, converted_from(meta))
    problem = crops_problem(preprocess) if config.tta else None
    if problem:  # needs the net's preprocessing: only after loading
        raise FinetuneError('--tta: %s' % problem)
    return Pretrained(network, meta, preprocess, head, frozen)


def assemble(config, ranks, pretrained=None, validation=True):
    """Prepare the lists, do the surgery on the pretrained net (loaded with
    :func:`load_and_plan` unless given) and build model, optimizer and
    iterators: a :class:`Run` (its iterators hold loader processes:
    ``run.inputs.finalize()`` when done)."""
    np.random.seed(config.seed)
    device = training_device(config.device, ranks)
    plan = pretrained or load_and_plan(config)
    pretrained, meta, pretrained_prep = plan.network, plan.meta, \
        plan.preprocess
    head, frozen = plan.head, plan.frozen
    lists = None
    start = time.perf_counter()
    if ranks.is_root:
        lists = prepare_lists(config, pretrained_prep.channels,
                              pretrained_prep.size)
    train_list, val_list, class_names, data_mean = ranks.bcast(lists)
    seconds = {'scan': time.perf_counter() - start}
    if not validation:
        val_list = []
    elif ranks.is_root and not val_list:
        print('no validation images: nothing is evaluated, model_best.npz '
              'and the evaluation report are not written; model_final.npz '
              'is the result', file=sys.stderr)
    train_net, eval_net = build_networks(pretrained, meta, head, frozen,
                                         len(class_names), config)
    preprocess = choose_preprocess(pretrained_prep, config.mean, data_mean)
    model = make_model(train_net, config.dtype, device)
    eval_model = model if eval_net is train_net else Classifier(eval_net)
    optimizer = make_optimizer(model, config, head, frozen, ranks)
    start = time.perf_counter()
    inputs = make_inputs(config, model, eval_model, train_list, val_list,
                         preprocess, device, ranks)
    seconds['features'] = time.perf_counter() - start
    return Run(model, optimizer, inputs, device, ranks, head, frozen,
               class_names, preprocess, val_list, seconds)


@contextlib.contextmanager
def run_folder(config):
    """Hold ``--out`` for this run: the refusals first (:func:`check_run_dir`,
    :func:`check_data`: a refused run leaves ``--out`` as it was), then the
    lock (:func:`exclusive_run`) and the run's identity written
    (:func:`prepare_run_dir`) before any list is."""
    check_run_dir(config)
    check_data(config)
    with exclusive_run(config.out):
        prepare_run_dir(config)
        yield


def fit(config):
    """Run (or resume) one fine-tuning job, or with ``config.lr_find`` the
    learning-rate range test (:func:`find_lr`) instead, as
    ``python -m finetune.train`` does with the same options.

    Freed memory is kept in the process from here on
    (:func:`~finetune.common.allocator.keep_freed_memory`, as the command
    does: batches are allocated and freed at every step).

    Args:
        config (TrainConfig): every option of the run.

    Returns:
        FitResult on rank 0; None on the other ranks of an mpiexec run;
        LRFindResult with ``lr_find``.

    Raises:
        FinetuneError: bad input (one line naming the file or option).
    """
    check_config(config)  # fields set after the TrainConfig was made
    keep_freed_memory()
    if config.dtype == 'float16' and config.device < 0:
        print('note: --dtype float16 on the CPU is slow (NumPy has no '
              'float16 matrix multiply); it is meant for GPUs',
              file=sys.stderr)
    if config.lr_find:
        return find_lr(config)
    ranks = ranks_for(config.communicator)
    training_device(config.device, ranks)  # a --device that cannot work
    if config.loaderjob > 0:  # its preload, before the image check's pool
        use_forkserver()
    pretrained = load_and_plan(config)
    if not ranks.is_root:
        return _fit(config, ranks, pretrained)
    with run_folder(config):
        return _fit(config, ranks, pretrained)


def _fit(config, ranks, pretrained):
    run = assemble(config, ranks, pretrained)
    network = run.network

    def save(path, **extra):
        save_model(path, network, run.class_names, run.preprocess,
                   frozen=run.frozen, replaced=run.head,
                   source=os.path.basename(config.pretrained), **extra)

    updater = SeededUpdater(run.inputs.train_iter, run.optimizer,
                            run.inputs.converter, run.device,
                            seed=config.seed, rank=ranks.rank)
    trainer = chainer.training.Trainer(
        updater, EpochsOrTimeLimit(config.epochs, config.time_limit),
        out=config.out)
    best = os.path.join(config.out, MODEL_BEST)
    unfreeze = recipe.Unfreeze(
        run.model.predictor, run.frozen, recipe.trunk_layers(
            network, run.head, run.frozen), config.warmup_epochs) \
        if config.unfreeze else None
    add_extensions(trainer, config, run.inputs, run.device, ranks,
                   lambda acc: save(best, val_accuracy=acc), unfreeze)
    start = time.perf_counter()
    try:
        run_trainer(trainer, config.resume, ranks, updater, config.out)
    finally:
        run.inputs.finalize()
    run.seconds['training'] = time.perf_counter() - start
    agree = ranks.weights_agree(run.model.predictor)
    if not ranks.is_root:
        return None
    if ranks.size > 1:
        print('%d ranks hold %s weights' % (
            ranks.size, 'identical' if agree else 'DIFFERENT'),
            file=sys.stderr)
    set_param_dtype(network, np.float32)  # evaluated as it is saved
    final = os.path.join(config.out, MODEL_FINAL)
    save(final)
    start = time.perf_counter()
    summary = evaluate_and_report(config, run.model.predictor,
                                  run.val_list, run.class_names,
                                  run.preprocess, run.device)
    run.seconds['evaluation'] = time.perf_counter() - start
    if summary:
        print(report.format_summary(summary))
    return FitResult(config.out, final, best if run.val_list else None,
                     summary, run.seconds)


def find_lr(config, n_steps=100, lr_min=1e-6, lr_max=1.0):
    """Learning-rate range test from the pretrained weights (nothing is
    trained for good); writes ``lr_find.png`` into ``--out``. ``--out``
    is held as by a training run (:func:`run_folder`): another run's folder
    is refused unless ``--resume auto`` (its lists are then used and kept)
    or ``--overwrite``.

    Returns:
        LRFindResult (``suggested_lr``, the curve).
    """
    check_config(config)
    if config.communicator:
        raise FinetuneError('--lr-find runs in one process: drop '
                            '--communicator')
    training_device(config.device, ranks_for(None))
    pretrained = load_and_plan(config)
    with run_folder(config):  # its lists are the run's, as in training
        return _find_lr(config, pretrained, n_steps, lr_min, lr_max)


def _find_lr(config, pretrained, n_steps, lr_min, lr_max):
    run = assemble(config, ranks_for(None), pretrained, validation=False)

    def batches():
        while True:
            yield run.inputs.converter(run.inputs.train_iter.next(),
                                       run.device)

    try:
        with chainer.using_config('train', True):
            result = lr_range_test(run.model, run.optimizer, batches(),
                                   lr_min, lr_max, n_steps)
    finally:
        run.inputs.finalize()
    path = os.path.join(config.out, 'lr_find.png')
    plot_lr_find(result, path)
    print('suggested learning rate: %.2g (--lr); loss curve: %s'
          % (result.suggested_lr, path))
    return result
