"""Frozen layers on OpenCV's dnn module: the fast exact CPU inference path.

Layers that are not trained need no graph and no gradients, so on the CPU
they may run on the fastest implementation of the same arithmetic. OpenCV's
``cv2.dnn`` reads Caffe nets natively and runs AlexNet's forward about 4x
faster than Chainer on the CPU (benchmarks/bench_model.py). The weights are
handed over as an in-memory caffemodel of the current Chainer weights, so
both paths compute the same function (checked in
tests/models/test_opencv_runner.py and test_opencv_runner_graphs.py to 1e-5
of the largest output).

A :class:`~finetune.models.CaffeGraph` (any DAG: AlexNet, ResNet,
GoogLeNet...) is cut where its ``forward(x, stop=...)`` stops: the layers
before the cut run on OpenCV and the one blob crossing the cut is the
output. BatchNorm runs on its stored statistics (test mode).
:func:`select_engine` is the one place that decides between OpenCV and
Chainer (``--backend``, ``--trunk-backend``).

OpenCV ignores LRN's ``k``; nets with ``k != 1`` stay on Chainer.

OpenCV keeps the intermediate blobs of the largest batch it ran, so a
batch is run in chunks whose blobs fit :data:`FORWARD_BUDGET`
(benchmarks/bench_memory.py: a 640-crop open_nsfw batch held 7 GB).
"""
import numpy as np
from google.protobuf import text_format

from finetune.caffe.importer import link_blobs
from finetune.caffe.importer import weighted_links
from finetune.caffe.writer import caffemodel_bytes
from finetune.common.errors import FinetuneError

#: The CPU engines of layers that need no gradient (``--backend``,
#: ``--trunk-backend``): OpenCV where it computes the net exactly, else
#: Chainer; OpenCV or an error; Chainer.
ENGINES = ('auto', 'opencv', 'chainer')
#: Bytes of intermediate blobs one OpenCV forward may need, as OpenCV's
#: ``getMemoryConsumption`` counts them (every blob, without the reuse
#: OpenCV does, so the memory really held is several times less: an
#: open_nsfw crop counts 96 MiB and holds about 10 MiB). A larger batch
#: runs in chunks; speed does not depend on the batch past a few images.
FORWARD_BUDGET = 1 << 30


def opencv_dnn():
    """The ``cv2.dnn`` module, or ``None`` when OpenCV is not installed."""
    try:
        import cv2
    except ImportError:
        return None
    return getattr(cv2, 'dnn', None)


def _inputs_of(net_param):
    kept = type(net_param)(name=net_param.name)
    kept.input.extend(net_param.input)
    kept.input_shape.extend(net_param.input_shape)
    kept.input_dim.extend(net_param.input_dim)
    return kept


def graph_definition(model, stop=None):
    """The layers a CaffeGraph's ``forward(x, stop=stop)`` runs.

    Args:
        model: a :class:`~finetune.models.CaffeGraph`.
        stop: a cut as ``forward`` takes it (None: the whole net).

    Returns:
        tuple: (NetParameter, name of the OpenCV layer whose first output
        is the blob crossing the cut). When that blob is not the first top
        of its layer (a Slice's second part) or is the input itself, an
        identity layer (test-mode Dropout) is appended to name it.

    Raises:
        CaffeModelError: the cut is not crossed by exactly one blob.
    """
    net_param = model.net_param
    keep = set(model.layers_before(stop))
    producer, index = model.cut_source(stop)
    kept = _inputs_of(net_param)
    names = set()
    for layer in net_param.layer:
        names.add(layer.name)
        if layer.type == 'Input' or layer.name in keep:
            kept.layer.add().CopyFrom(layer)
    if producer is not None and index == 0:
        return kept, producer
    output = 'cut_output'
    while output in names:
        output += '_'
    identity = kept.layer.add(name=output, type='Dropout', top=[output])
    identity.bottom.append(model.cut_blobs(stop)[0])
    return kept, output


def supports(net_param):
    """True when OpenCV computes every layer as Caffe does."""
    return all(layer.lrn_param.k == 1 for layer in net_param.layer
               if layer.type == 'LRN')


def _caffe_weights(model, kept):
    """``{layer: Caffe blobs}`` of the model's current weights, for the
    weighted layers of ``kept``."""
    layers = {layer.name: layer for layer in kept.layer}
    weights = {}
    for name, link in weighted_links(model).items():
        if name not in layers:
            continue
        blobs = link_blobs(link)
        layer = layers[name]
        if layer.type == 'InnerProduct' and \
                layer.inner_product_param.transpose:
            blobs[0] = np.ascontiguousarray(blobs[0].T)
        weights[name] = blobs
    return weights


class OpenCVStages:
    """``model.forward(x, stop=stop)`` in test mode, computed by OpenCV.

    Args:
        model: a CaffeGraph (on the CPU); its current weights (and
            BatchNorm statistics) are copied, so build a new one after they
            change.
        stop: where to stop: any cut (an int index into ``layer_names`` or
            a layer name); default: the whole net.

    Raises:
        ImportError: no OpenCV.
        CaffeModelError: the CaffeGraph cut is not crossed by one blob.
    """

    def __init__(self, model, stop=None, budget=FORWARD_BUDGET):
        dnn = opencv_dnn()
        if dnn is None:
            raise ImportError('OpenCV (opencv-python-headless) is needed')
        kept, self.output = graph_definition(model, stop)
        self.shape = model.cut_shape(stop)
        proto = text_format.MessageToString(kept).encode()
        blob = caffemodel_bytes(kept, _caffe_weights(model, kept))
        self.net = dnn.readNetFromCaffe(np.frombuffer(proto, np.uint8),
                                        np.frombuffer(blob, np.uint8))
        self.budget = budget
        self._chunk = {}

    def chunk_size(self, sample_shape):
        """Images of ``sample_shape`` (C, H, W) per OpenCV forward (at
        least 1), so that their blobs fit ``budget`` bytes."""
        if sample_shape not in self._chunk:
            _, blobs = self.net.getMemoryConsumption((1,) + sample_shape)
            self._chunk[sample_shape] = max(1, self.budget // max(blobs, 1))
        return self._chunk[sample_shape]

    def __call__(self, x):
        """float32 (N, C, H, W) -> the cut's output (ndarray, the shape
        Chainer's forward returns), computed :meth:`chunk_size` images at
        a time."""
        x = np.ascontiguousarray(x, dtype=np.float32)
        step = self.chunk_size(tuple(int(d) for d in x.shape[1:]))
        outs = []
        for start in range(0, len(x), step):
            self.net.setInput(x[start:start + step])
            outs.append(self.net.forward(self.output))
        out = outs[0] if len(outs) == 1 else np.concatenate(outs)
        return out.reshape((len(x),) + tuple(self.shape))


def select_engine(model, engine='auto', stop=None, option='--backend'):
    """Decide where ``model.forward(x, stop=stop)`` runs in test mode: the
    one place that chooses between OpenCV and Chainer.

    Args:
        model: a CaffeGraph.
        engine (str): one of :data:`ENGINES`.
        stop: the cut, as :class:`OpenCVStages` takes it.
        option (str): the command-line option ``engine`` came from, named
            in errors.

    Returns:
        OpenCVStages, or None for Chainer's path: ``engine`` 'chainer',
        a model that is not on the CPU, or 'auto' where OpenCV is not
        installed or cannot run the net exactly (LRN with ``k != 1``).

    Raises:
        FinetuneError: an unknown ``engine``, or 'opencv' where OpenCV
            cannot run the net.
    """
    on_cpu = model.xp is np
    check_engine(model, engine, option, on_cpu)
    if engine == 'chainer' or not on_cpu:
        return None
    if opencv_dnn() is None or not supports(model.net_param):
        return None  # 'auto'
    return OpenCVStages(model, stop)


def check_engine(model, engine, option='--backend', on_cpu=True):
    """Refuse an ``engine`` that :func:`select_engine` would refuse on
    ``model``, without building anything (for a check before a run; a
    model on a GPU runs on Chainer whatever the engine, ``on_cpu=False``).

    Raises:
        FinetuneError: an unknown ``engine``, or 'opencv' where OpenCV is
            not installed or cannot run the net exactly.
    """
    if engine not in ENGINES:
        raise FinetuneError('%s %s: expected one of %s'
                            % (option, engine, ', '.join(ENGINES)))
    if engine == 'opencv' and on_cpu and (opencv_dnn() is None or
                                          not supports(model.net_param)):
        raise FinetuneError('%s opencv: OpenCV is not installed or cannot '
                            'run this net exactly (LRN k != 1)' % option)
