"""What every command-line tool shares: one-line errors, exit status 2."""
import functools
import signal
import sys

from finetune.common.errors import FinetuneError


def command(main):
    """Decorate a CLI ``main(argv=None)``: user errors become one line.

    A :class:`FinetuneError` or ``OSError`` prints ``error: <file>: <what
    is wrong>`` on stderr and exits with status 2 instead of a traceback;
    Ctrl-C (or SIGTERM) exits with 130 after cleaning up. Otherwise ``main``'s return value is returned,
    so ``sys.exit(main())`` gives the right status.
    """
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
        except KeyboardInterrupt:
            print('interrupted; re-run the same command to continue',
                  file=sys.stderr)
            sys.exit(130)
    return run


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt
