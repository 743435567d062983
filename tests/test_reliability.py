"""The reliability corpus (scripts/reliability.py, issue 14): every case of
misuse and bad input it runs ends with the right exit status and last line,
no traceback, and nothing changed outside the command's outputs."""
import os
import re
import subprocess
import sys

import pytest

SCRIPT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(
    __file__))), 'scripts', 'reliability.py')
FIGURE = re.compile(
    r'^reliability: (\d+) cases, (\d+) tracebacks, (\d+) files changed '
    r'outside outputs, (\d+) wrong exits, (\d+) wrong last lines, (\d+) '
    r'failed checks', re.M)


def run_corpus(*args):
    return subprocess.run([sys.executable, SCRIPT] + list(args),
                          capture_output=True, text=True, timeout=1200)


@pytest.mark.slow
def test_every_case_of_the_corpus_is_handled():
    result = run_corpus()
    figures = FIGURE.findall(result.stdout)
    assert figures, result.stdout[-3000:] + result.stderr[-3000:]
    cases, *wrong = map(int, figures[-1])
    failures = [line for line in result.stdout.splitlines()
                if line.startswith('FAIL') or line.startswith('        ')]
    assert wrong == [0] * 5, '\n'.join(failures)
    assert cases >= 90  # items 1-16 of issue 14 and what passed before
    assert result.returncode == 0, result.stderr[-3000:]


def test_a_case_that_goes_wrong_is_counted(tmp_path):
    """The judge itself: a changed input, a traceback and a wrong exit are
    each counted (a corpus that cannot fail proves nothing)."""
    sys.path.insert(0, os.path.dirname(SCRIPT))
    try:
        import reliability
    finally:
        sys.path.pop(0)
    inputs = tmp_path / 'inputs'
    inputs.mkdir()
    (inputs / 'kept.txt').write_text('kept')
    corpus = reliability.Corpus(str(inputs), None, {}, str(tmp_path / 'mpl'))
    writes_input = reliability.Case(
        'writes an input', [sys.executable, '-c', 'open(%r, "a").write("x"); '
                            'raise SystemExit(3)' % str(inputs /
                                                        'kept.txt')],
        status=2, last='^$')
    crashes = reliability.Case(
        'crashes', [sys.executable, '-c', '1 / 0'], status=1,
        last='ZeroDivisionError')
    available = {'userns': False, 'chattr': False, 'read-only': False}
    first = reliability.run_case(corpus, writes_input, str(tmp_path / 'a'),
                                 available)
    second = reliability.run_case(corpus, crashes, str(tmp_path / 'b'),
                                  available)
    assert first.changed == [os.path.join('inputs', 'kept.txt')]
    assert first.wrong_exit and not first.traceback
    assert second.traceback and not second.wrong_exit
    text, failed = reliability.summary([first, second])
    assert text == ('reliability: 2 cases, 1 tracebacks, 1 files changed '
                    'outside outputs, 1 wrong exits, 0 wrong last lines, 0 '
                    'failed checks')
    assert failed
