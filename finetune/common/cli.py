"""What every command-line tool shares: one-line errors (exit status 2),
argument types and the options that mean the same thing in every command
(``-d/--device``, ``--model``, ``-B/--batchsize``, ``--class-names``)."""
import argparse
import functools
import math
import signal
import sys

from finetune.common.errors import FinetuneError


#: Exit status of a command that SIGTERM stopped after it saved its state
#: (sysexits' EX_TEMPFAIL: run it again to continue); Ctrl-C gives 130.
PREEMPTED_STATUS = 75


class Preempted(Exception):
    """SIGTERM stopped a command at a safe point, its state saved; the
    message says so and how to continue. :func:`command` prints it and
    exits with :data:`PREEMPTED_STATUS`."""


def command(main=None, on_interrupt='re-run the same command to continue'):
    """Decorate a CLI ``main(argv=None)``: user errors become one line.

    A :class:`FinetuneError` or ``OSError`` prints ``error: <file>: <what
    is wrong>`` on stderr and exits with status 2 instead of a traceback;
    Ctrl-C (or SIGTERM) exits with 130 after cleaning up, printing
    ``interrupted; <on_interrupt>`` (what continues the work: give each
    command its own with ``@command(on_interrupt=...)``); a
    :class:`Preempted` prints its message and exits with
    :data:`PREEMPTED_STATUS`. Otherwise ``main``'s return value is
    returned, so ``sys.exit(main())`` gives the right status.
    """
    if main is None:
        return functools.partial(command, on_interrupt=on_interrupt)

    @functools.wraps(main)
    def run(argv=None):
        if signal.getsignal(signal.SIGTERM) == signal.SIG_DFL:
            # let `finally` blocks stop loader processes on `kill`
            signal.signal(signal.SIGTERM, _raise_interrupt)
        try:
            try:
                return main(argv) or 0
            except Exception as e:
                if _during_interrupt(e):  # cleanup after Ctrl-C failed
                    raise KeyboardInterrupt from e
                raise
        except (FinetuneError, OSError) as e:
            print('error: %s' % e, file=sys.stderr)
            sys.exit(2)
        except Preempted as e:
            if str(e):  # rank 0's; the other ranks say nothing
                print(e, file=sys.stderr)
            sys.exit(PREEMPTED_STATUS)
        except KeyboardInterrupt:
            print('interrupted; %s' % on_interrupt, file=sys.stderr)
            sys.exit(130)
    return run


def _during_interrupt(error):
    """Whether ``error`` was raised while a KeyboardInterrupt was being
    handled (a loader or a file closed by the interrupt's cleanup): the
    command was interrupted, whatever broke on the way out."""
    seen = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, KeyboardInterrupt):
            return True
        seen.add(id(error))
        error = error.__context__
    return False


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt


class Range:
    """Which numbers an option or a :class:`TrainConfig` field takes: the
    one rule the argparse types below and the Python API's checks share.

    Args:
        kind (type): ``int`` or ``float`` (floats must be finite; ints
            are exact, ``True``/``False`` are not numbers here).
        low, high (number or None): bounds, None for none.
        low_open, high_open (bool): the bound itself is excluded.
    """

    def __init__(self, kind, low=None, high=None, low_open=False,
                 high_open=False):
        self.kind, self.low, self.high = kind, low, high
        self.low_open, self.high_open = low_open, high_open

    def bounds(self):
        """``'>= 1'``, ``'in [0, 1)'``, ... (``''`` for no bound)."""
        if self.low is not None and self.high is not None:
            return 'in %s%s, %s%s' % (
                '(' if self.low_open else '[', _number(self.low),
                _number(self.high), ')' if self.high_open else ']')
        if self.low is not None:
            return '%s %s' % ('>' if self.low_open else '>=',
                              _number(self.low))
        if self.high is not None:
            return '%s %s' % ('<' if self.high_open else '<=',
                              _number(self.high))
        return ''

    def describe(self):
        """``'an integer >= 1'``, ``'a finite number in [0, 1)'``, ..."""
        noun = 'an integer' if self.kind is int else 'a finite number'
        return ('%s %s' % (noun, self.bounds())).strip()

    def problem(self, value):
        """What ``value`` must be (``'>= 1'``; ``'an integer >= 1'`` for a
        value of another kind, or a non-finite one), or None when it is
        in the range."""
        if self.accepts(value):
            return None
        if self._is_kind(value) and _finite(value) and self.bounds():
            return self.bounds()
        return self.describe()

    def _is_kind(self, value):
        """An int for ``int``, an int or float for ``float``; no bool."""
        return not isinstance(value, bool) and isinstance(
            value, (int, float) if self.kind is float else int)

    def accepts(self, value):
        """Whether ``value`` (already a number) is in the range."""
        if not self._is_kind(value) or not _finite(value):
            return False
        low_ok = self.low is None or (
            value > self.low if self.low_open else value >= self.low)
        high_ok = self.high is None or (
            value < self.high if self.high_open else value <= self.high)
        return low_ok and high_ok

    def parse(self, text):
        """``text`` as a number in the range, else ``ValueError`` saying
        what was expected (``'expected an integer >= 1, got '0''``)."""
        try:
            value = self.kind(text)
        except (TypeError, ValueError):
            value = None
        if value is None or not self.accepts(value):
            raise ValueError('expected %s, got %r' % (self.describe(), text))
        return value

    def __call__(self, text):
        """argparse type (argparse prints the one-line error)."""
        try:
            return self.parse(text)
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e)) from None

    def __repr__(self):  # argparse names the type in some messages
        return self.describe()


def refusal(option, value, what):
    """The one-line refusal of ``value`` for ``option``:
    ``'--batchsize 0: must be >= 1'``, ``"--lr 'x': must be a finite
    number > 0"`` (``what`` from :meth:`Range.problem`)."""
    return '%s %r: must be %s' % (option, value, what)


def _finite(value):
    try:
        return math.isfinite(value)
    except OverflowError:  # an int too large for a float
        return False


def _number(value):
    return '%g' % value if isinstance(value, float) else str(value)


#: argparse types; each is also a :class:`Range`.
positive_int = Range(int, low=1)
non_negative_int = Range(int, low=0)
finite_float = Range(float)
positive_float = Range(float, low=0, low_open=True)
non_negative_float = Range(float, low=0)
fraction = Range(float, low=0, high=1, high_open=True)


def device_id(text):
    """argparse type of ``-d/--device``: a GPU number, ``-1`` for the CPU,
    or Chainer's specifiers ``@numpy`` and ``@cupy:N``."""
    if text == '@numpy':
        return -1
    number = text[len('@cupy:'):] if text.startswith('@cupy:') else text
    try:
        value = int(number)
    except ValueError:
        value = -2
    if value < -1:
        raise argparse.ArgumentTypeError(
            "expected a GPU number, -1 (CPU), '@numpy' or '@cupy:N', got %r"
            % text)
    return value


def add_device_argument(parser, help_text='GPU number, -1 for the CPU '
                        "(default), or Chainer's '@numpy'/'@cupy:N'"):
    """``-d/--device`` as in Chainer's examples, ``--gpu`` kept as an alias."""
    parser.add_argument('-d', '--device', '--gpu', dest='device',
                        type=device_id, default=-1, metavar='DEVICE',
                        help=help_text)


#: ``--tta``'s help, the same in ``predict`` and ``train``
TTA_HELP = ("Caffe's 10-crop test-time augmentation: the mean probabilities "
            "of each image's four corner and centre crops and their mirrors "
            "(ten forward passes per image)")


def add_tta_argument(parser):
    """``--tta`` (:data:`TTA_HELP`)."""
    parser.add_argument('--tta', action='store_true', help=TTA_HELP)


def add_class_names_argument(parser, help_text='file of class names, one '
                             'per line (line i names class i)'):
    """``--class-names FILE``: the class-name file of ``convert`` and
    ``gather``; their older spellings ``--labels`` and ``--label-names``
    stay as aliases."""
    parser.add_argument('--class-names', '--labels', '--label-names',
                        dest='class_names', metavar='FILE', help=help_text)


#: the flags of the batch size in every command (``--batch`` an alias)
BATCHSIZE_FLAGS = ('-B', '--batchsize', '--batch')


def add_batchsize_argument(parser, default, help_text='images per batch',
                           kind=positive_int):
    """``-B/--batchsize N`` (``--batch`` an alias), parsed by ``kind``."""
    parser.add_argument(*BATCHSIZE_FLAGS, dest='batchsize', type=kind,
                        default=default, metavar='N',
                        help='%s (default: %%(default)s)' % help_text)


def add_model_argument(parser, help_text='model file (.npz) from '
                       'finetune.train or finetune.convert'):
    """``--model FILE``, required: the model file a command reads."""
    parser.add_argument('--model', required=True, metavar='FILE',
                        help=help_text)


def image_size(text):
    """``--resize``-style value: 'H,W' or one number for both, as a tuple
    of two ints >= 1 (pixels)."""
    try:
        sides = [int(v) for v in text.split(',')]
    except ValueError:
        sides = []
    if len(sides) == 1:
        sides *= 2
    if len(sides) != 2 or min(sides) < 1:
        raise argparse.ArgumentTypeError(
            'expected H,W or one size in pixels, got %r' % text)
    return tuple(sides)
