"""The numeric fields of Caffe layers, read and checked before anything is
allocated.

A deploy definition may be hand-edited, downloaded or stored in a model file
someone sent: a field of 0 (``stride``, ``group``, ``kernel_size``), a
non-finite float or a size whose arrays cannot fit in memory must end in one
line naming the field, not in a ZeroDivisionError, a silently NaN output or
a MemoryError later. The functions here raise :class:`LayerError` with the
message; :class:`finetune.models.CaffeGraph` adds the prototxt and the layer.
Sizes are Python ints (no overflow), in float32 elements or bytes.
"""
import math

#: Largest array one layer may make, in bytes: one parameter array (a weight
#: matrix) or one example's output blob. The largest classic Caffe
#: classifier, VGG-16, has a 392 MiB fc6 weight and 12 MiB of activations
#: per image in its largest blob; 4 GiB is ten times that and still fits in
#: a workstation's memory, so real nets pass while a hostile ``num_output``
#: or input size is refused before its array exists.
MAX_ARRAY_BYTES = 4 * 2 ** 30
#: Largest sum of a net's parameters, in bytes (VGG-16: 528 MiB, AlexNet:
#: 233 MiB); the same reasoning as :data:`MAX_ARRAY_BYTES`.
MAX_PARAMETER_BYTES = 4 * 2 ** 30
#: Widest ACROSS_CHANNELS LRN window (Chainer loops over half of it; real
#: nets use 5).
MAX_LRN_SIZE = 2 ** 16 - 1
#: Bytes of one element (float32, how parameters and activations are made).
ITEMSIZE = 4


class LayerError(Exception):
    """A layer's parameters or input shapes are unusable (the message)."""


def size_text(nbytes):
    """``nbytes`` as a short human size: ``'715.3 GiB'``, ``'12.0 MiB'``."""
    for unit, scale in (('GiB', 2 ** 30), ('MiB', 2 ** 20), ('KiB', 2 ** 10)):
        if nbytes >= scale:
            return '%.1f %s' % (nbytes / scale, unit)
    return '%d bytes' % nbytes


def shape_text(shape):
    """``(3, 227, 227)`` as ``'3x227x227'``."""
    return 'x'.join(str(d) for d in shape)


def array_bytes(shape):
    """Bytes of a float32 array of ``shape`` (a Python int, exact)."""
    return math.prod(int(d) for d in shape) * ITEMSIZE


def check_array(shape, what):
    """Refuse an array of ``shape`` larger than :data:`MAX_ARRAY_BYTES`;
    ``what`` names it (``'num_output 1000000000: the weights'``)."""
    nbytes = array_bytes(shape)
    if nbytes > MAX_ARRAY_BYTES:
        raise LayerError('%s %s would take %s; the limit is %s per array'
                         % (what, shape_text(shape), size_text(nbytes),
                            size_text(MAX_ARRAY_BYTES)))
    return nbytes


def at_least(value, field, minimum=1):
    """``value`` of the integer field ``field``, refused below ``minimum``."""
    if value < minimum:
        raise LayerError('%s must be >= %d, got %d' % (field, minimum, value))
    return int(value)


def finite(value, field, low=-math.inf, high=math.inf, high_open=False):
    """``value`` of the float field ``field``: finite and in [low, high]
    (or [low, high) with ``high_open``)."""
    value = float(value)
    above = value >= high if high_open else value > high
    if not math.isfinite(value) or value < low or above:
        bounds = []
        if low > -math.inf:
            bounds.append('>= %g' % low)
        if high < math.inf:
            bounds.append('%s %g' % ('<' if high_open else '<=', high))
        raise LayerError('%s must be a finite number%s, got %r'
                         % (field, ' ' + ' and '.join(bounds) if bounds
                            else '', value))
    return value


def _given(param, name):
    """The values given for the field ``name`` (repeated or optional)."""
    value = getattr(param, name)
    if not isinstance(value, int):  # a repeated field's container
        return [int(v) for v in value]
    return [int(value)] if param.HasField(name) else []


def pair(param, name, default=None, minimum=1):
    """Caffe's (h, w) of a spatial field: ``name`` (one value for both, or
    two for Convolution's repeated fields) or ``name_h`` and ``name_w``.

    Args:
        param: a ``ConvolutionParameter`` or ``PoolingParameter`` message.
        name (str): ``'kernel_size'``, ``'stride'``, ``'pad'`` or
            ``'dilation'`` (the ``_h``/``_w`` fields drop ``_size``).
        default (int or None): when nothing is given; None: required.
        minimum (int): smallest allowed value.

    Returns:
        tuple of int: (h, w).
    """
    fields = param.DESCRIPTOR.fields_by_name
    base = name.replace('_size', '')
    split = [base + '_h', base + '_w']
    values = _given(param, name)
    if split[0] in fields and any(param.HasField(f) for f in split):
        if values:
            raise LayerError('give %s or %s and %s, not both'
                             % (name, split[0], split[1]))
        missing = [f for f in split if not param.HasField(f)
                   and not fields[f].has_default_value]
        if missing:
            raise LayerError('%s and %s must be given together'
                             % tuple(split))
        checked = zip(split, (getattr(param, f) for f in split))
    elif len(values) > 2:
        raise LayerError('%s has %d values; a 2-D layer takes 1 or 2'
                         % (name, len(values)))
    elif values:
        checked = zip((name, name), (values[0], values[-1]))
    elif default is None:
        raise LayerError('%s must be given' % name)
    else:
        return (default, default)
    return tuple(at_least(v, f, minimum) for f, v in checked)
