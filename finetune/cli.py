"""What every command-line tool shares: one-line errors, exit status 2."""
import sys

from finetune.errors import FinetuneError


def run_cli(main, argv=None):
    """Run ``main(argv)``; print a :class:`FinetuneError` as one line.

    The user sees ``error: <file>: <what is wrong>`` on stderr and the
    process exits with status 2, instead of a traceback.
    """
    try:
        status = main(argv)
    except FinetuneError as e:
        print('error: %s' % e, file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print('interrupted', file=sys.stderr)
        sys.exit(130)
    sys.exit(status or 0)
