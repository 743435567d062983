"""What every command-line tool shares: one-line errors (exit status 2),
argument types and the ``-d/--device`` option."""
import argparse
import functools
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
            return main(argv) or 0
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


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt


def positive_int(text):
    """argparse type: an integer >= 1 (argparse prints the one-line error)."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError('expected an integer >= 1, got %r'
                                         % text)
    return value


def non_negative_int(text):
    """argparse type: an integer >= 0."""
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError('expected an integer >= 0, got %r'
                                         % text)
    return value


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
