"""Export a finetune model file to ONNX, for deployment outside Chainer.

Needs the optional extra ``pip install 'finetune[onnx]'`` (``onnx<1.19``;
the exporter is the ``onnx_chainer`` package that ships inside chainer
7.8.1). The network is traced in test mode (dropout off) on an input of the
model's shape, ``(batch, C, H, W)`` from its preprocessing, and written
atomically with

* one input ``data``: the preprocessed image batch (float32, BGR, 0-255
  minus the mean, times the scale, cropped), as Caffe's deploy nets take;
* two outputs: ``logits`` (the last layer) and ``prob`` (their softmax);
* ``metadata_props`` that make the file self-describing (see
  :func:`read_metadata`): ``class_names`` (JSON list), ``mean`` (JSON
  nested list, C x 1 x 1 for a mean pixel or C x H x W for a mean image at
  ``size``), ``scale``, ``size`` (JSON [H, W]), ``crop_size`` (JSON int or
  null), ``channels``, ``channel_order`` and ``arch``.

Caffe's pieces export as standard ONNX operators: grouped convolutions as
``Conv`` with ``group``; ACROSS_CHANNELS LRN as ``LRN`` (whose ``alpha`` is
Caffe's: both divide it by the window size); WITHIN_CHANNEL LRN as
``Mul``/``AveragePool``/``Pow``; Caffe's ceil-rounded pooling as
``MaxPool`` on an input padded with -inf (only when the rounding needs it),
then ``Slice``. onnx_chainer's own ``Pad`` converter rejects a float pad
value such as -inf, so this module supplies its own. On graph nets,
BatchNorm is an inference ``BatchNormalization`` (scale 1, bias 0, the
stored mean and variance, Caffe's eps), Scale a ``Mul`` (and ``Add`` with
``bias_term``) by its broadcast weights, Eltwise SUM ``Add``, Concat
``Concat``, global average pooling an ``AveragePool`` over the whole
map.
"""
import json
import warnings

import chainer
import chainer.functions as F
import numpy as np

from finetune.models.cpu_kernels import chainer_functions
from finetune.models.model_file import load_model
from finetune.common.errors import FinetuneError
from finetune.common.errors import one_line
from finetune.inference import MAX_OPSET
from finetune.inference import MIN_OPSET
from finetune.common.fileio import atomic_write
from finetune.common.fileio import refuse_overwriting_inputs

ONNX_REQUIREMENT = 'onnx>=1.13,<1.19'
INSTALL_HINT = ("ONNX export needs the onnx package: pip install "
                "'finetune[onnx]' (or pip install '%s')" % ONNX_REQUIREMENT)
INPUT_NAME = 'data'
OUTPUT_NAMES = ('logits', 'prob')


class ExportError(FinetuneError):
    """The model cannot be exported to ONNX."""


def _import_onnx():
    """Return (onnx, onnx_chainer), or raise a one-line install hint."""
    try:
        import onnx
        import onnx_chainer
        from onnx_chainer.export import _available
    except ImportError as e:
        raise ExportError('%s (%s)' % (INSTALL_HINT, e)) from None
    if not _available:
        # onnx_chainer swallows its own import errors (an onnx too new for
        # it: onnx 1.19 dropped onnx.mapping)
        raise ExportError('%s; onnx %s does not work with onnx_chainer'
                          % (INSTALL_HINT, onnx.__version__))
    return onnx, onnx_chainer


class _Deploy(chainer.Chain):
    """The exported graph: the model's logits and their softmax."""

    def __init__(self, model):
        super().__init__()
        with self.init_scope():
            self.model = model

    def forward(self, x):
        logits = self.model(x)
        return logits, F.softmax(logits)


def _convert_pad(params):
    """``F.pad`` -> ``Pad``, with a float constant such as -inf.

    onnx_chainer's converter calls ``len()`` on any non-int constant, so
    the -inf that :func:`finetune.models.functions.caffe_pooling_2d` pads
    with fails there.
    """
    from onnx_chainer import onnx_helper
    func, opset = params.func, params.opset_version
    if func.mode != 'constant':
        raise ValueError('F.pad mode %r is not exported' % func.mode)
    ndim = len(func.inputs[0].shape)
    pad_bw = np.asarray(func.pad_bw)
    if pad_bw.ndim < 2:
        pad_bw = np.broadcast_to(pad_bw.reshape(-1)[:2], (ndim, 2))
    pads = [int(p) for p in pad_bw[:, 0]] + [int(p) for p in pad_bw[:, 1]]
    value = np.asarray(func.keywords.get('constant_values', 0), np.float64)
    if value.size != 1:
        raise ValueError('ONNX Pad takes a single constant value, not %r'
                         % value.tolist())
    value = float(value.reshape(()))
    input_names = list(params.input_names)
    if opset >= 11:
        context = params.context
        input_names.append(context.add_const(np.array(pads, np.int64),
                                             'pads'))
        input_names.append(context.add_const(np.array(value, np.float32),
                                             'constant_value'))
        return onnx_helper.make_node('Pad', input_names, params.output_names,
                                     mode='constant'),
    return onnx_helper.make_node('Pad', input_names, params.output_names,
                                 mode='constant', pads=pads, value=value),


def _convert_tiled_max_pooling(params):
    """:class:`~finetune.models.functions.TiledMaxPooling2D` (the CPU fast
    path of Caffe max pooling) -> ``MaxPool``: no padding, and its windows
    lie inside the input, so floor rounding gives the same output size."""
    from onnx_chainer import onnx_helper
    func = params.func
    return onnx_helper.make_node(
        'MaxPool', list(params.input_names), params.output_names,
        kernel_shape=list(func.kernel), strides=list(func.stride),
        pads=[0, 0, 0, 0]),


EXTERNAL_CONVERTERS = {'Pad': _convert_pad,
                       'TiledMaxPooling2D': _convert_tiled_max_pooling}


def _float_list(array):
    """float32 array -> nested lists of the shortest exact floats."""
    array = np.asarray(array, np.float32)
    flat = [float(str(v)) for v in array.reshape(-1)]
    return np.array(flat, dtype=np.float64).reshape(array.shape).tolist()


def model_metadata(meta, preprocess):
    """The ``metadata_props`` (str -> str) written into the ONNX file."""
    channels = preprocess.channels
    return {
        'class_names': json.dumps(list(meta['class_names'])),
        'arch': str(meta['arch']),
        'mean': json.dumps(_float_list(preprocess.mean)),
        'scale': repr(float(preprocess.scale)),
        'size': json.dumps([int(n) for n in preprocess.size]),
        'crop_size': json.dumps(preprocess.crop_size),
        'channels': str(int(channels)),
        'channel_order': 'BGR' if channels == 3 else 'gray',
        'value_range': '0-255',
        'preprocess': ('resize to size (H, W), subtract mean, multiply by '
                       'scale, center-crop crop_size; CHW float32'),
    }


def read_metadata(onnx_path_or_model):
    """The finetune metadata of an exported ONNX file, decoded.

    Returns:
        dict: class_names (list), mean (float32 array), scale (float),
        size (tuple), crop_size (int or None), channels (int), and the
        other keys as strings.
    """
    onnx, _ = _import_onnx()
    model = onnx_path_or_model
    if isinstance(model, str):
        model = onnx.load(model, load_external_data=False)
    props = {p.key: p.value for p in model.metadata_props}
    out = dict(props)
    if 'class_names' in props:
        out['class_names'] = json.loads(props['class_names'])
    if 'mean' in props:
        out['mean'] = np.asarray(json.loads(props['mean']), np.float32)
    if 'scale' in props:
        out['scale'] = float(props['scale'])
    if 'size' in props:
        out['size'] = tuple(json.loads(props['size']))
    if 'crop_size' in props:
        out['crop_size'] = json.loads(props['crop_size'])
    if 'channels' in props:
        out['channels'] = int(props['channels'])
    return out


def to_onnx(model, input_shape, batch_size=1, opset=None, metadata=None):
    """Trace ``model`` in test mode and return the ONNX ModelProto.

    Args:
        model: a Chainer network mapping (N, C, H, W) to logits.
        input_shape (tuple): (C, H, W).
        batch_size (int or None): the fixed batch size of the graph, or
            ``None`` for any batch size (a symbolic ``N``).
        opset (int or None): ONNX opset, 7 to 11 (default 11).
        metadata (dict): str -> str, stored as ``metadata_props``.

    Raises:
        ExportError: onnx missing, or a layer that does not convert.
    """
    onnx, onnx_chainer = _import_onnx()
    opset = _check_args(batch_size, opset)
    dummy = np.zeros((batch_size or 1,) + tuple(input_shape), np.float32)
    input_shapes = None
    if batch_size is None:
        input_shapes = [('N',) + tuple(input_shape)]
    with warnings.catch_warnings():
        # experimental-feature notices for external_converters, and
        # onnx's deprecation of onnx.mapping, which onnx_chainer uses
        warnings.simplefilter('ignore', FutureWarning)
        warnings.simplefilter('ignore', DeprecationWarning)
        try:
            # trace Chainer's own functions, which onnx_chainer converts
            with chainer.using_config('train', False), chainer_functions():
                onnx_model = onnx_chainer.export(
                    _Deploy(model), dummy, filename=None,
                    opset_version=opset, input_names=[INPUT_NAME],
                    output_names=list(OUTPUT_NAMES),
                    external_converters=_external_converters(batch_size),
                    input_shapes=input_shapes, no_testcase=True)
        except (ValueError, RuntimeError, TypeError, NotImplementedError,
                onnx.checker.ValidationError) as e:
            raise ExportError('cannot export %s to ONNX: %s'
                              % (getattr(model, 'arch', 'model'),
                                 one_line(e, first_line_only=True))) from None
    _finish(onnx, onnx_model, metadata or {})
    return onnx_model


def _check_args(batch_size, opset):
    """The opset to use; raise ExportError for values that cannot work."""
    opset = MAX_OPSET if opset is None else int(opset)
    if not MIN_OPSET <= opset <= MAX_OPSET:
        raise ExportError('opset %d is not supported: onnx_chainer writes '
                          'opsets %d to %d' % (opset, MIN_OPSET, MAX_OPSET))
    if batch_size is not None and batch_size < 1:
        raise ExportError('batch size must be at least 1, not %d'
                          % batch_size)
    return opset


def _external_converters(batch_size):
    converters = dict(EXTERNAL_CONVERTERS)
    if batch_size is None:
        converters['Reshape'] = _convert_reshape_any_batch
    return converters


def _convert_reshape_any_batch(params):
    """``Reshape`` that keeps the batch axis (0 = copy) for a symbolic N.

    Linear layers flatten (N, C, H, W) to (N, C*H*W); the traced shape
    holds the dummy batch size, which would pin the graph to it.
    """
    from onnx_chainer import onnx_helper
    func = params.func
    if params.opset_version < 5 or not hasattr(func, 'shape'):
        raise ValueError('Reshape cannot keep a symbolic batch size here')
    shape = list(func.shape)
    if shape and shape[0] == func.inputs[0].shape[0]:
        shape[0] = 0  # ONNX: copy the input's dimension
    input_names = list(params.input_names)
    input_names.append(params.context.add_const(
        np.asarray(shape, np.int64), 'shape'))
    return onnx_helper.make_node('Reshape', input_names,
                                 params.output_names),


def _finish(onnx, onnx_model, metadata):
    """Weights as initializers only (not graph inputs), metadata, check."""
    graph = onnx_model.graph
    weights = {t.name for t in graph.initializer}
    keep = [i for i in graph.input if i.name not in weights]
    del graph.input[:]
    graph.input.extend(keep)
    opsets = list(onnx_model.opset_import)
    onnx_model.ir_version = max(4, onnx.helper.find_min_ir_version_for(
        opsets))  # IR 4: initializers need not be inputs
    onnx_model.doc_string = ('finetune export: input %r is a preprocessed '
                             'batch (see metadata_props); outputs %s'
                             % (INPUT_NAME, ', '.join(OUTPUT_NAMES)))
    del onnx_model.metadata_props[:]
    onnx.helper.set_model_props(onnx_model, dict(metadata))
    try:
        onnx.checker.check_model(onnx_model)
    except onnx.checker.ValidationError as e:
        raise ExportError('exported ONNX graph is invalid: %s'
                          % one_line(e, first_line_only=True)) from None


def export_onnx(model_path, onnx_path, batch_size=1, opset=None):
    """Export the model file ``model_path`` to ``onnx_path`` (atomically).

    Args:
        model_path (str): a finetune model file (.npz).
        onnx_path (str): destination .onnx file.
        batch_size (int or None): fixed batch size, or ``None`` for any.
        opset (int or None): ONNX opset, 7 to 11 (default 11).

    Returns:
        onnx.ModelProto: the model written.

    Raises:
        FinetuneError: unreadable model file, onnx not installed, or a
            layer that does not export.
    """
    _import_onnx()  # fail fast, before loading 240 MB of weights
    _check_args(batch_size, opset)
    refuse_overwriting_inputs(onnx_path, [model_path], '--out')
    model, meta, preprocess = load_model(model_path)
    try:
        onnx_model = to_onnx(model, preprocess.input_shape, batch_size,
                             opset, model_metadata(meta, preprocess))
    except ExportError as e:
        raise ExportError('%s: %s' % (model_path, e)) from None
    with atomic_write(onnx_path) as tmp:
        with open(tmp, 'wb') as f:
            f.write(onnx_model.SerializeToString())
    return onnx_model


def shape_text(value_info):
    dims = value_info.type.tensor_type.shape.dim
    return 'x'.join(d.dim_param or str(d.dim_value) for d in dims)


def describe_export(onnx_model, onnx_path):
    """One line: what :func:`export_onnx` wrote."""
    names = read_metadata(onnx_model)['class_names']
    return ('wrote %s (opset %d, %d classes, input %s %s)'
            % (onnx_path, onnx_model.opset_import[0].version, len(names),
               INPUT_NAME, shape_text(onnx_model.graph.input[0])))
