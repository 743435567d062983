"""What the trainer reads: images (random crops drawn per step) or, with
``--cache-features``, the frozen trunk's features cached once; and the
validation iterator (cached centre-crop features when the trunk is
frozen). The feature-cache-vs-images decision is made here only."""
import dataclasses
import os
import sys

import chainer

from finetune.data.datasets import LabeledImageDataset
from finetune.data.feature_cache import CachedCropConverter
from finetune.data.feature_cache import CachedFeatureDataset
from finetune.data.feature_cache import cached_features
from finetune.data.loader import make_iterator
from finetune.data.transforms import CaffePreprocess
from finetune.training.extensions import RandomCropConverter


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
