"""The reliability corpus: every case of misuse and bad input
(:mod:`tests.reliability.cases`) ends with the right exit status and last
line, no traceback, and nothing changed outside the command's outputs.

One test per case. The inputs are built once (about 20 s: two short
LeNet runs give the snapshots the run-folder cases resume) in a folder
whose path is fixed when the cases are collected. ``python
scripts/reliability.py`` runs this module and prints the figure the
README quotes.
"""
import os
import shutil
import sys
import tempfile

import pytest

from tests.support.http_server import LocalHTTPServer
from tests.reliability.cases import build_cases
from tests.reliability.hostile import write_hostile_files
from tests.reliability.hostile import write_misuse_files
from tests.reliability.inputs import build_inputs
from tests.reliability.judge import Case
from tests.reliability.judge import Corpus
from tests.reliability.judge import probe
from tests.reliability.judge import report_line
from tests.reliability.judge import restore_permissions
from tests.reliability.judge import run_case
from tests.reliability.judge import summary
from tests.reliability.judge import tally

ROOT = os.path.join(tempfile.gettempdir(),
                    'finetune-reliability-%d' % os.getpid())
#: the inputs' layout, known when the cases are collected; the server and
#: the files come with the ``corpus`` fixture
CORPUS = Corpus(os.path.join(ROOT, 'inputs'), None, {},
                os.path.join(ROOT, 'matplotlib'))
CASES = build_cases(CORPUS)


@pytest.fixture(scope='module')
def corpus():
    """:data:`CORPUS` with its inputs written and its server serving, and
    the optional abilities of this machine (user namespaces, chattr)."""
    shutil.rmtree(ROOT, ignore_errors=True)
    os.makedirs(ROOT)
    try:
        with LocalHTTPServer() as server:
            CORPUS.server = server
            build_inputs(CORPUS)
            write_hostile_files(CORPUS)
            write_misuse_files(CORPUS)
            yield CORPUS, probe(os.path.join(ROOT, 'probe'))
    finally:
        restore_permissions(ROOT, immutable=True)
        shutil.rmtree(ROOT, ignore_errors=True)


@pytest.mark.slow
@pytest.mark.parametrize('case', CASES, ids=[case.name for case in CASES])
def test_case_ends_as_it_must(case, corpus, tmp_path, record_property):
    inputs, available = corpus
    outcome = run_case(inputs, case, str(tmp_path / 'case'), available)
    record_property('reliability', tally(outcome))
    if outcome.skipped:
        pytest.skip(outcome.skipped)
    if outcome.problems:
        pytest.fail(report_line(CASES.index(case) + 1, outcome),
                    pytrace=False)


def test_the_corpus_covers_what_it_claims():
    names = [case.name for case in CASES]
    assert len(names) == len(set(names)), 'case names must be unique'
    assert len(CASES) >= 96  # issue 14's items 1-16 and what passed before


def test_a_case_that_goes_wrong_is_counted(tmp_path):
    """The judge itself: a changed input, a traceback and a wrong exit are
    each counted (a corpus that cannot fail proves nothing)."""
    inputs = tmp_path / 'inputs'
    inputs.mkdir()
    (inputs / 'kept.txt').write_text('kept')
    corpus = Corpus(str(inputs), None, {}, str(tmp_path / 'mpl'))
    writes_input = Case(
        'writes an input', [sys.executable, '-c', 'open(%r, "a").write("x"); '
                            'raise SystemExit(3)' % str(inputs /
                                                        'kept.txt')],
        status=2, last='^$')
    crashes = Case('crashes', [sys.executable, '-c', '1 / 0'], status=1,
                   last='ZeroDivisionError')
    available = {'userns': False, 'chattr': False, 'read-only': False}
    first = run_case(corpus, writes_input, str(tmp_path / 'a'), available)
    second = run_case(corpus, crashes, str(tmp_path / 'b'), available)
    assert first.changed == [os.path.join('inputs', 'kept.txt')]
    assert first.wrong_exit and not first.traceback
    assert second.traceback and not second.wrong_exit
    text, failed = summary([tally(first), tally(second)])
    assert text == ('reliability: 2 cases, 1 tracebacks, 1 files changed '
                    'outside outputs, 1 wrong exits, 0 wrong last lines, 0 '
                    'failed checks')
    assert failed
