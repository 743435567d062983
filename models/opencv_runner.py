"""Frozen layers on OpenCV's dnn module: the fast exact CPU inference path.

Layers that are not trained need no graph and no gradients, so on the CPU
they may run on the fastest implementation of the same arithmetic. OpenCV's
``cv2.dnn`` reads Caffe nets natively and runs AlexNet's forward about 4x
faster than Chainer on the CPU (benchmarks/bench_model.py). The weights are
handed over as an in-memory caffemodel of the current Chainer weights, so
both paths compute the same function (checked in tests/test_opencv_backend.py
to 1e-5 of the largest output).

OpenCV ignores LRN's ``k``; nets with ``k != 1`` stay on Chainer.
"""
import numpy as np
from google.protobuf import text_format

from finetune.caffe.caffemodel import parse_net_text
from finetune.caffe.importer import weighted_links
from finetune.caffe.writer import caffemodel_bytes


def opencv_dnn():
    """The ``cv2.dnn`` module, or ``None`` when OpenCV is not installed."""
    try:
        import cv2
    except ImportError:
        return None
    return getattr(cv2, 'dnn', None)


def truncated_definition(net_param, layer_names, stop):
    """Layers of ``net_param`` up to the stage of ``layer_names[stop-1]``.

    A stage is a weighted layer and the parameter-free layers after it, as
    in the models' ``forward(x, stop=...)``. A trailing Softmax is dropped
    (the models return logits).

    Returns:
        tuple: (NetParameter, name of its last layer: OpenCV names outputs
        by layer, so an in-place ReLU's output is asked for by its name).
    """
    stop = len(layer_names) if stop is None else stop
    end = layer_names[stop] if stop < len(layer_names) else None
    kept = type(net_param)(name=net_param.name)
    kept.input.extend(net_param.input)
    kept.input_shape.extend(net_param.input_shape)
    kept.input_dim.extend(net_param.input_dim)
    output = None
    for layer in net_param.layer:
        if layer.name == end or layer.type == 'Softmax':
            break
        kept.layer.add().CopyFrom(layer)
        output = layer.name
    return kept, output


def supports(net_param):
    """True when OpenCV computes every layer as Caffe does."""
    return all(layer.lrn_param.k == 1 for layer in net_param.layer
               if layer.type == 'LRN')


class OpenCVStages:
    """``model.forward(x, stop=stop)`` in test mode, computed by OpenCV.

    Args:
        model: AlexNet, CaffeNet or CaffeGraph (on the CPU); its current
            weights are copied, so build a new one after they change.
        stop (int): number of leading stages to run (default: all).
    """

    def __init__(self, model, stop=None):
        dnn = opencv_dnn()
        if dnn is None:
            raise ImportError('OpenCV (opencv-python-headless) is needed')
        definition = parse_net_text(model.definition(), 'model definition')
        kept, self.output = truncated_definition(
            definition, list(model.layer_names), stop)
        names = {layer.name for layer in kept.layer}
        weights = {name: [p.array.astype(np.float32, copy=False)
                          for p in (link.W, link.b) if p is not None]
                   for name, link in weighted_links(model).items()
                   if name in names}
        proto = text_format.MessageToString(kept).encode()
        blob = caffemodel_bytes(kept, weights)
        self.net = dnn.readNetFromCaffe(np.frombuffer(proto, np.uint8),
                                        np.frombuffer(blob, np.uint8))

    def __call__(self, x):
        """float32 (N, C, H, W) -> the stop-th stage's output (ndarray)."""
        self.net.setInput(np.ascontiguousarray(x, dtype=np.float32))
        return self.net.forward(self.output)


def fast_stages(model, stop=None):
    """OpenCVStages for ``model`` when OpenCV can run it exactly, else None
    (the caller keeps Chainer's path)."""
    if opencv_dnn() is None or model.xp is not np:
        return None
    definition = parse_net_text(model.definition(), 'model definition')
    if not supports(definition):
        return None
    return OpenCVStages(model, stop)
