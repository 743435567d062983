"""What the trainer reads: images (random crops drawn per step) or, with
``--cache-features``, the frozen trunk's features cached once; and the
validation iterator (cached centre-crop features when the trunk is
frozen). The feature-cache-vs-images decision is made here only."""
import dataclasses
import os
import sys

import chainer

from finetune.common.errors import FinetuneError
from finetune.data.datasets import LabeledImageDataset
from finetune.data.feature_cache import CachedCropConverter
from finetune.data.feature_cache import CachedFeatureDataset
from finetune.data.feature_cache import cached_features
from finetune.data.loader import make_iterator
from finetune.data.transforms import CaffePreprocess
from finetune.training.extensions import RandomCropConverter
from finetune.training.surgery import frozen_cut


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


def uncropped(root, entries, preprocess):
    """Images resized but not cropped (crops are drawn per step)."""
    p = preprocess
    return LabeledImageDataset(root, entries, CaffePreprocess(
        p.size, None, p.mean, p.scale, p.channels))


def check_feature_cache(loading, network, frozen):
    """Refuse ``--cache-features`` (in ``loading``, a
    :class:`~finetune.training.config.LoadingOptions`) on a network whose
    ``frozen`` layers are not a leading run of it, before any image is
    scanned.

    Raises:
        FinetuneError: naming the option and what it needs.
    """
    if loading.cache_features and not frozen_cut(network, frozen):
        raise FinetuneError('--cache-features needs frozen leading '
                            'layers, e.g. --freeze conv1-conv5')


def feature_cache(loading, split, net, entries, preprocess, mode, device,
                  ranks, root, cache_dir):
    """Path of the frozen-prefix features of ``entries`` in ``cache_dir``
    (rank 0 builds it; the others wait and read the same file)."""
    path = None
    if ranks.is_root:
        network = net.net
        path, built = cached_features(
            cache_dir, split, network,
            network.layer_names[:net.n_frozen_layers], net.features, root,
            entries, uncropped(root, entries, preprocess),
            preprocess, mode, device, loading.val_batchsize,
            loading.loaderjob, loading.cache_crops)
        print('%s features: %s %s' % (split, 'cached in' if built
                                      else 'reusing', path), file=sys.stderr)
    return ranks.bcast(path)


def make_inputs(loading, model, eval_model, train_list, val_list,
                preprocess, device, ranks, root, out):
    """The training and validation iterators (see :class:`RunInputs`).

    Args:
        loading (LoadingOptions): the batch sizes, loader processes, seed
            and feature cache of the run (``config.loading``).
        model, eval_model: the training Classifier and the one evaluated
            each epoch (``model`` itself, or the head on cached features).
        train_list, val_list (list): entries ``(path, label)``.
        preprocess (CaffePreprocess): the run's preprocessing.
        device, ranks: the Chainer device and the process group.
        root (str): the folder the entries' paths are relative to
            (``--data``).
        out (str): the run's output folder; cached features go to its
            ``feature_cache`` sub-folder.
    """
    net = model.predictor
    seed = loading.seed
    cache_dir = os.path.join(out, 'feature_cache')
    if loading.cache_features:
        dataset = CachedFeatureDataset(
            feature_cache(loading, 'train', net, train_list, preprocess,
                          'random', device, ranks, root, cache_dir),
            [label for _, label in train_list])
        train_iter = make_iterator(ranks.scatter(dataset, seed),
                                   loading.batchsize, 0, seed=seed)
        converter = CachedCropConverter(seed)
    else:
        train_iter = make_iterator(ranks.scatter(uncropped(
            root, train_list, preprocess), seed),
            loading.batchsize, loading.loaderjob, seed=seed)
        converter = RandomCropConverter(preprocess, seed)
    if not val_list:
        return RunInputs(train_iter, converter, None, None, None)
    if eval_model is model:
        dataset = LabeledImageDataset(root, val_list, preprocess)
        val_iter = make_iterator(ranks.scatter(dataset, seed),
                                 loading.val_batchsize, loading.loaderjob,
                                 repeat=False, shuffle=False)
        return RunInputs(train_iter, converter, val_iter, model,
                         chainer.dataset.concat_examples)
    dataset = CachedFeatureDataset(
        feature_cache(loading, 'val', net, val_list, preprocess, 'center',
                      device, ranks, root, cache_dir),
        [label for _, label in val_list])
    val_iter = make_iterator(ranks.scatter(dataset, seed),
                             loading.val_batchsize, 0, repeat=False,
                             shuffle=False)
    return RunInputs(train_iter, converter, val_iter, eval_model,
                     CachedCropConverter(0, train=False))
