"""The reliability corpus's figure: runs ``tests/reliability`` under pytest.

    .venv/bin/python scripts/reliability.py [-k PATTERN] [pytest options]

The cases (misuse and bad input, each a command and what must come of it)
live in ``tests/reliability/cases.py`` and run as one pytest test each;
this runner adds them up into the line the README quotes::

    reliability: 96 cases, 0 tracebacks, 0 files changed outside outputs, 0 wrong exits, 0 wrong last lines, 0 failed checks

and exits with pytest's status (1 when any case went wrong).
"""
import os
import sys
import time

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class Tally:
    """A pytest plugin adding up the counts each case records as its
    ``reliability`` property (an ordered dict: what -> count, ``skipped``
    last; see ``tests/reliability/judge.py`` ``tally``)."""

    def __init__(self):
        self.total = {}

    def pytest_runtest_logreport(self, report):
        for name, counts in report.user_properties:
            if name == 'reliability' and report.when == 'call':
                for key, count in counts.items():
                    self.total[key] = self.total.get(key, 0) + count

    def figure(self):
        skipped = self.total.pop('skipped', 0)
        text = 'reliability: ' + ', '.join(
            '%d %s' % (count, name) for name, count in self.total.items())
        return text + (' (%d skipped)' % skipped if skipped else '')


def main(argv=None):
    start = time.time()
    tally = Tally()
    status = pytest.main(['-q', '-p', 'no:cacheprovider', os.path.join(
        REPO, 'tests', 'reliability', 'test_corpus.py')] +
        list(sys.argv[1:] if argv is None else argv), plugins=[tally])
    print('%s; %.0f s' % (tally.figure(), time.time() - start))
    return int(status)


if __name__ == '__main__':
    sys.exit(main())
