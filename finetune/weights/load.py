"""A registry name or a file -> a ready network with its preprocessing.

:func:`pretrained` is the public call (``finetune.pretrained(NAME)``, as
``timm.create_model(NAME, pretrained=True)`` and torchvision's
``weights.transforms()``); :func:`load_pretrained` is what
``finetune.train --pretrained`` uses. A caffemodel is converted once into
the cache (:func:`finetune.weights.cache.converted_path`) and later
calls reuse that file.
"""
import dataclasses
import os
from typing import Optional

from finetune.common.errors import FinetuneError
from finetune.models.model_file import load_model
from finetune.weights.cache import converted_path
from finetune.weights.conversion import ConversionOptions
from finetune.weights.conversion import ensure_converted
from finetune.weights.registry import PretrainedModel
from finetune.weights.registry import converted_from


@dataclasses.dataclass
class PretrainedNet:
    """A pretrained network ready to run or to fine-tune.

    Attributes:
        net (chainer.Chain): the network with its weights, on the CPU;
            ``net(x)`` maps a float32 batch (N, C, crop, crop) to logits
            (N, n_classes).
        preprocess (CaffePreprocess): image (a path or PIL image) -> that
            network's float32 input (C, crop, crop): resize, crop, mean
            subtracted, scaled, as the weights were trained.
        class_names (list of str): the name of each output, in order.
        entry (PretrainedModel or None): the registry entry the weights
            came from (its recommended ``head`` and ``freeze``); None for
            a file that is not in the registry.
        meta (dict): everything stored with the converted weights.
    """
    net: object
    preprocess: object
    class_names: list
    entry: Optional[PretrainedModel]
    meta: dict

    def predictor(self, device=-1, backend='auto'):
        """A :class:`finetune.inference.predictor.Predictor` of this net
        (``predict(paths)``, ``features(...)``); ``device`` and
        ``backend`` as :func:`finetune.load` takes them."""
        from finetune.inference.predictor import Predictor
        return Predictor(self.net, self.class_names, self.preprocess,
                         self.meta, device, backend)


def pretrained(name_or_path, prototxt=None, pretrained_dir=None):
    """Load a pretrained net by registry name or path, ready to use.

    Args:
        name_or_path (str): a registry name (``python -m finetune.fetch
            --list``), a ``.caffemodel`` (converted once into the cache)
            or a finetune model file (``.npz``).
        prototxt (str or None): deploy definition of a caffemodel that is
            neither in the registry nor BVLC's AlexNet/CaffeNet.
        pretrained_dir (str or None): where registry weights were fetched
            to; default the cache's (:func:`~finetune.weights.cache.
            weights_dir`). Nothing is downloaded here: a missing file
            raises, saying how to fetch it.

    Returns:
        PretrainedNet: net, preprocess, class_names, entry, meta.

    Raises:
        FinetuneError: unknown name, missing or unreadable weights (one
            line saying how to get them).
    """
    net, meta, preprocess = load_pretrained(name_or_path, prototxt,
                                            pretrained_dir)
    return PretrainedNet(net, preprocess, list(meta['class_names']),
                         converted_from(meta), meta)


def load_pretrained(pretrained, prototxt=None, pretrained_dir=None):
    """(network, meta, preprocess) of a registry name, a caffemodel
    (converted once into the cache's ``converted/``) or a model file.

    Raises:
        FinetuneError: the weights are missing (the message says how to
            get them) or cannot be read.
    """
    if pretrained.endswith('.npz'):
        if not os.path.isfile(pretrained):
            raise FinetuneError('%s: no such model file' % pretrained)
        return load_model(pretrained)
    path, _ = ensure_converted(pretrained, ConversionOptions(
        prototxt=prototxt), converted_path(pretrained),
        pretrained_dir=pretrained_dir)
    return load_model(path)
