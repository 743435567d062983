"""Fine-tuning as one function: ``finetune.fit(TrainConfig(...))``, the
root that calls each stage in turn.

Read top to bottom like Chainer's ``examples/imagenet`` ``main()``:
:func:`fit` loads the pretrained net (:mod:`finetune.weights`), plans the
surgery (:func:`~finetune.training.recipe.surgery_plan`), holds ``--out``
and prepares the lists (:mod:`~finetune.training.run_dir`), builds the
networks (:func:`~finetune.training.surgery.build_networks`), model,
optimizer (:func:`~finetune.training.solver.make_optimizer`), iterators
(:mod:`~finetune.training.inputs`: images or cached features) and trainer
with its extensions (:mod:`~finetune.training.extensions`), runs it and
writes the final model and evaluation report
(:func:`~finetune.training.report.evaluate_and_report`). Every step is a
plain function of plain arguments; where Chainer needs an order (dtype
before ``optimizer.setup``, ``disable_update`` after it) one function does
both.
"""
import contextlib
import dataclasses
import os
import sys
import time
from typing import Optional

import chainer
import numpy as np

from finetune.common.allocator import keep_freed_memory
from finetune.common.errors import FinetuneError
from finetune.common.fileio import naming_write_errors
from finetune.data.loader import use_forkserver
from finetune.data.transforms import CaffePreprocess
from finetune.inference.tta import crops_problem
from finetune.models.model_file import save_model
from finetune.models.opencv_runner import check_engine
from finetune.training import recipe
from finetune.training import report
from finetune.training.config import check_config
from finetune.training.distributed import rank_device
from finetune.training.distributed import ranks_for
from finetune.training.extensions import Classifier
from finetune.training.extensions import EpochsOrTimeLimit
from finetune.training.extensions import SeededUpdater
from finetune.training.extensions import StopOnSigterm
from finetune.training.extensions import add_training_extensions
from finetune.training.extensions import latest_snapshot
from finetune.training.extensions import trainer_snapshot
from finetune.training.inputs import RunInputs
from finetune.training.inputs import check_feature_cache
from finetune.training.inputs import make_inputs
from finetune.training.lr_find import lr_range_test
from finetune.training.lr_find import plot_lr_find
from finetune.training.recipe import surgery_plan
from finetune.training.report import evaluate_and_report
from finetune.training.schedule import add_lr_schedule
from finetune.training.run_dir import check_data
from finetune.training.run_dir import check_run_dir
from finetune.training.run_dir import exclusive_run
from finetune.training.run_dir import prepare_lists
from finetune.training.run_dir import prepare_run_dir
from finetune.training.run_dir import run_identity
from finetune.training.run_dir import resume_snapshot
from finetune.training.snapshot import load_snapshot
from finetune.training.solver import make_optimizer
from finetune.training.surgery import build_networks
from finetune.training.surgery import set_param_dtype
from finetune.weights.load import load_pretrained
from finetune.weights.registry import converted_from

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


def choose_preprocess(preprocess, mean, prepared_mean):
    """The pretrained net's preprocessing with the ``--mean`` choice."""
    if mean == 'pretrained':
        return preprocess
    means = {'dataset': prepared_mean, 'none': None}
    return CaffePreprocess(preprocess.size, preprocess.crop_size,
                           means[mean], preprocess.scale,
                           preprocess.channels)


def make_model(net, dtype, device):
    """Classifier over ``net``, its parameters cast to ``dtype`` and sent
    to ``device``."""
    set_param_dtype(net, np.dtype(dtype))
    model = Classifier(net)
    model.to_device(device)
    device.use()
    return model


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
    preemption = StopOnSigterm(ranks, trainer_snapshot(), out)
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


@dataclasses.dataclass
class Run:
    """Everything one run is made of (built by :func:`assemble`).

    Attributes:
        model: Classifier over the training FineTuneNet.
        optimizer: set up, Caffe multipliers and frozen layers applied.
        inputs (RunInputs): iterators and converters.
        device: the Chainer device.
        ranks: SingleProcess or MultiNode.
        head, frozen, trunk (list of str): replaced, frozen and unfrozen
            (``--unfreeze``) layer names (see :class:`Pretrained`).
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
    trunk: list
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
        trunk (list of str): the pretrained layers ``--unfreeze`` trains
            after the warm-up (empty without it).
    """
    network: object
    meta: dict
    preprocess: CaffePreprocess
    head: list
    frozen: list
    trunk: list


def load_and_plan(config):
    """:class:`Pretrained` for ``config``: the net loaded and the surgery
    checked, before any image is read or anything is written to --out."""
    network, meta, preprocess = load_pretrained(
        config.pretrained, config.prototxt, config.pretrained_dir)
    head, frozen = surgery_plan(config.surgery, network, converted_from(meta))
    check_feature_cache(config.loading, network, frozen)
    check_engine(network, config.trunk_backend, '--trunk-backend',
                 on_cpu=config.device < 0)
    problem = crops_problem(preprocess) if config.tta else None
    if problem:  # needs the net's preprocessing: only after loading
        raise FinetuneError('--tta: %s' % problem)
    trunk = recipe.trunk_layers(network, head, frozen) \
        if config.unfreeze else []
    return Pretrained(network, meta, preprocess, head, frozen, trunk)


def assemble(config, ranks, pretrained=None, validation=True):
    """Prepare the lists, do the surgery on the pretrained net (loaded with
    :func:`load_and_plan` unless given) and build model, optimizer and
    iterators: a :class:`Run` (its iterators hold loader processes:
    ``run.inputs.finalize()`` when done)."""
    np.random.seed(config.seed)
    device = rank_device(config.device, ranks)
    plan = pretrained or load_and_plan(config)
    pretrained, meta, pretrained_prep = plan.network, plan.meta, \
        plan.preprocess
    head, frozen = plan.head, plan.frozen
    lists = None
    start = time.perf_counter()
    if ranks.is_root:
        lists = prepare_lists(config.dataset, pretrained_prep.channels,
                              pretrained_prep.size, out=config.out,
                              resume=config.resume, seed=config.seed,
                              jobs=config.loaderjob)
    train_list, val_list, class_names, data_mean = ranks.bcast(lists)
    seconds = {'scan': time.perf_counter() - start}
    if not validation:
        val_list = []
    elif ranks.is_root and not val_list:
        print('no validation images: nothing is evaluated, model_best.npz '
              'and the evaluation report are not written; model_final.npz '
              'is the result', file=sys.stderr)
    train_net, eval_net = build_networks(
        pretrained, meta, head, frozen, len(class_names),
        config.cache_features, config.trunk_backend)
    preprocess = choose_preprocess(pretrained_prep, config.mean, data_mean)
    model = make_model(train_net, config.dtype, device)
    eval_model = model if eval_net is train_net else Classifier(eval_net)
    optimizer = make_optimizer(model, config.solver, head, frozen,
                               plan.trunk, ranks)
    start = time.perf_counter()
    inputs = make_inputs(config.loading, model, eval_model, train_list,
                         val_list, preprocess, device, ranks, config.data,
                         config.out)
    seconds['features'] = time.perf_counter() - start
    return Run(model, optimizer, inputs, device, ranks, head, frozen,
               plan.trunk, class_names, preprocess, val_list, seconds)


@contextlib.contextmanager
def run_folder(config):
    """Hold ``--out`` for this run: the refusals first
    (:func:`check_run_dir`, :func:`check_data`: a refused run leaves
    ``--out`` as it was), then the lock (:func:`exclusive_run`) and the
    run's identity written (:func:`prepare_run_dir`) before any list
    is."""
    identity = run_identity(config)
    check_run_dir(config.output, identity)
    check_data(config.dataset, config.out, config.resume)
    with exclusive_run(config.out):
        prepare_run_dir(config.output, identity)
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
    rank_device(config.device, ranks)  # a --device that cannot work
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
        run.model.predictor, run.frozen, run.trunk, config.warmup_epochs) \
        if config.unfreeze else None
    add_lr_schedule(trainer, config.schedule, config.lr)
    add_training_extensions(trainer, config.output, run.inputs, run.device,
                            ranks, lambda acc: save(best, val_accuracy=acc),
                            unfreeze)
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
    summary = evaluate_and_report(
        config.output, run.model.predictor, run.val_list, run.class_names,
        run.preprocess, run.device, root=config.data,
        batchsize=config.val_batchsize, loaderjob=config.loaderjob,
        trunk_backend=config.trunk_backend)
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
    rank_device(config.device, ranks_for(None))
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
