"""The one per-user cache of pretrained weights.

Everything finetune downloads or converts for you lives under one root::

    $FINETUNE_CACHE            (if set)
    $XDG_CACHE_HOME/finetune   (else, if that is set)
    ~/.cache/finetune          (else)
        weights/     caffemodels from ``python -m finetune.fetch``
        converted/   model files (.npz) made from caffemodels, by
                     ``finetune.convert``, ``finetune.train --pretrained``
                     and ``finetune.pretrained()``

``--pretrained-dir`` / ``--dir`` and ``--out`` override these places;
nothing is ever written beside a caffemodel you pass (its folder may be
read-only). This module imports neither chainer nor numpy.
"""
import hashlib
import os


def cache_root():
    """The root folder of the cache (see the module docstring); it may not
    exist yet."""
    root = os.environ.get('FINETUNE_CACHE')
    if root:
        return root
    xdg = os.environ.get('XDG_CACHE_HOME')
    if xdg:
        return os.path.join(xdg, 'finetune')
    return os.path.join(os.path.expanduser('~'), '.cache', 'finetune')


def weights_dir():
    """Where downloaded caffemodels are kept: ``<root>/weights``."""
    return os.path.join(cache_root(), 'weights')


def converted_dir():
    """Where converted model files are kept: ``<root>/converted``."""
    return os.path.join(cache_root(), 'converted')


def converted_path(source):
    """The cached model file of ``source`` (a registry name or a
    caffemodel path): ``converted/<name>-<12 hex>.npz``, the hex being the
    SHA-1 of the name or of the absolute path, so two files of the same
    name in different folders do not share a cache entry."""
    if os.path.exists(source):
        source = os.path.abspath(source)
    key = hashlib.sha1(source.encode('utf-8')).hexdigest()[:12]
    name = os.path.splitext(os.path.basename(source))[0]
    return os.path.join(converted_dir(), '%s-%s.npz' % (name, key))
