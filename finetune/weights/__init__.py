"""Pretrained weights: the registry, fetch, conversion and the one cache.

The stage every pretrained network comes through::

    registry.py      what finetune knows about each named model
    download.py      fetch a model's caffemodel, SHA-1 checked, resumably
    conversion.py    caffemodel -> model file (.npz), once, across processes
    cache.py         the per-user cache of downloaded and converted weights
    load.py          a name or path -> a ready network
    random_model.py  random-weight caffemodels of a real net's layout

``finetune.pretrained('open_nsfw')`` is :func:`finetune.weights.load.pretrained`.
Importing this package imports neither chainer nor numpy.
"""
