"""The reliability corpus's judge: how a case is run and what counts as
going wrong.

A :class:`Case` is one command (``python -m finetune.<command>`` or a
``python -c`` script of library calls) run in a folder of its own, with
what must come of it. :func:`run_case` runs it and checks:

* the exit status;
* the last line of stderr (or stdout): a pattern of what it must say;
* no ``Traceback`` and no ``Exception ignored`` in stdout or stderr;
* nothing changed outside the case's declared outputs: the file tree of the
  shared inputs and of the case's own folder (its working directory,
  ``HOME`` and ``TMPDIR``) is recorded (path, size, mtime_ns, sha1) before
  and after;
* for some, one more check (a report's rows, a file that must not be).
"""
import dataclasses
import hashlib
import os
import re
import shutil
import stat
import subprocess
import sys
import time
from typing import Callable, Optional

PY = sys.executable
TRACEBACK_MARKS = ('Traceback (most recent call last)', 'Exception ignored')
ANSI = re.compile(r'\x1b\[[0-9;]*[A-Za-z]')
TIMEOUT = 150

#: ``python -c`` wrapper of the library cases: a user's script that
#: handles finetune's documented exception base, so any other exception
#: shows as a traceback.
API_SCRIPT = '''
import sys
import numpy as np
from PIL import Image
import finetune
from finetune.common.errors import FinetuneError
try:
{body}
except FinetuneError as e:
    print('error: %s: %s' % (type(e).__name__, e), file=sys.stderr)
    sys.exit(2)
'''

@dataclasses.dataclass
class Result:
    """What a command did."""
    returncode: int
    stdout: str
    stderr: str


@dataclasses.dataclass
class Case:
    """One misuse or bad input and what must come of it.

    Attributes:
        name (str): what is tried (issue 14's item number first).
        argv (list): the command, run in the case's own folder.
        status (int): the exit status it must end with.
        last (str): a regex the last non-empty line of ``stream`` must
            match (``re.search``).
        outputs (tuple): paths relative to the case's folder the command
            may create or change (a folder: all below it).
        setup: ``setup(folder)`` prepares the folder before the file tree
            is recorded.
        check: ``check(folder, result)`` -> what is wrong (str) or None.
        run: ``run(case, folder, env)`` -> Result, instead of running
            ``argv`` once (a lock held, signals, two runs).
        needs (str): 'userns', 'read-only' or 'chattr': skipped without.
        stream (str): where ``last`` is looked for: 'stderr' or 'stdout'.
    """
    name: str
    argv: list
    status: int = 2
    last: str = ''
    outputs: tuple = ()
    setup: Optional[Callable] = None
    check: Optional[Callable] = None
    run: Optional[Callable] = None
    needs: Optional[str] = None
    stream: str = 'stderr'


@dataclasses.dataclass
class Corpus:
    """Where the inputs are and what serves the URLs.

    Attributes:
        inputs (str): the shared, read-only inputs (see :func:`build_inputs`).
        server (LocalHTTPServer): serves the URL lists' images.
        images (dict): name -> image bytes the server serves.
        mpl_dir (str): matplotlib's cache, shared by every command and
            outside every recorded tree (the machine's, not a command's).
    """
    inputs: str
    server: object
    images: dict
    mpl_dir: str

    def path(self, *parts):
        return os.path.join(self.inputs, *parts)

    def env(self, folder):
        """The environment of a command run in ``folder``: HOME and TMPDIR
        there, no proxies, no finetune cache setting."""
        env = {k: v for k, v in os.environ.items()
               if k.lower() not in ('http_proxy', 'https_proxy', 'all_proxy',
                                    'no_proxy', 'finetune_cache',
                                    'xdg_cache_home')}
        env.update(HOME=os.path.join(folder, 'home'),
                   TMPDIR=os.path.join(folder, 'tmp'),
                   MPLCONFIGDIR=self.mpl_dir, PYTHONDONTWRITEBYTECODE='1',
                   LC_ALL='C.UTF-8')
        for name in ('home', 'tmp'):
            os.makedirs(os.path.join(folder, name), exist_ok=True)
        return env


def module(name, *args):
    """``python -m finetune.NAME ARGS`` (callable args stay, see
    :func:`resolved`)."""
    return [PY, '-m', 'finetune.' + name] + [
        a if callable(a) else str(a) for a in args]


def api(body):
    """``python -c`` running the lines ``body`` in :data:`API_SCRIPT`."""
    lines = ''.join('    %s\n' % line for line in body.strip().splitlines())
    return [PY, '-c', API_SCRIPT.format(body=lines)]


def exact(path):
    return re.escape(path)


def article(word):
    return ('an ' if word[0] in 'aeiou' else 'a ') + word


def resolved(case):
    """``case`` with each callable item of its ``argv`` called: paths known
    only once the inputs exist (the newest snapshot of a run)."""
    return dataclasses.replace(case, argv=[item() if callable(item) else item
                                           for item in case.argv])


# ---------------------------------------------------------------- running

def plain_run(argv, folder, env):
    try:
        done = subprocess.run(argv, cwd=folder, env=env, capture_output=True,
                              text=True, timeout=TIMEOUT,
                              stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired as e:
        return Result(-1, _text(e.stdout), _text(e.stderr) +
                      '\n(timed out after %d s)' % TIMEOUT)
    return Result(done.returncode, done.stdout, done.stderr)


def _text(data):
    if isinstance(data, bytes):
        return data.decode('utf-8', 'replace')
    return data or ''


def user_namespace(*mount_commands):
    """``unshare`` running shell ``mount_commands``, then the command."""
    script = ' && '.join(mount_commands + ('exec "$@"',))
    return ['unshare', '--user', '--map-root-user', '--mount', 'sh', '-c',
            script, 'sh']


# ---------------------------------------------------------------- judging

def tree_state(roots):
    """{path: ('file', size, mtime_ns, sha1) | ('link', target) | ('dir',)}
    of everything under ``roots`` (links not followed)."""
    state = {}
    for root in roots:
        for directory, dirs, files in os.walk(root):
            for name in dirs + files:
                path = os.path.join(directory, name)
                info = os.lstat(path)
                if stat.S_ISLNK(info.st_mode):
                    state[path] = ('link', os.readlink(path))
                elif stat.S_ISDIR(info.st_mode):
                    state[path] = ('dir',)
                else:
                    state[path] = ('file', info.st_size, info.st_mtime_ns,
                                   _sha1(path))
    return state


def _sha1(path):
    digest = hashlib.sha1()
    try:
        with open(path, 'rb') as f:
            for block in iter(lambda: f.read(1 << 20), b''):
                digest.update(block)
    except OSError as e:
        return 'unreadable: %s' % e.strerror
    return digest.hexdigest()


def changed_outside(before, after, outputs):
    """Paths added, removed or changed that are not under ``outputs``
    (absolute; the folders leading to an output may be created)."""
    def allowed(path):
        for output in outputs:
            if path == output or path.startswith(output + os.sep):
                return True
            if output.startswith(path + os.sep) and \
                    after.get(path, before.get(path)) == ('dir',):
                return True
        return False
    return sorted(p for p in set(before) | set(after)
                  if before.get(p) != after.get(p) and not allowed(p))


def last_line(text):
    """The last non-empty line (a progress bar's last state counts)."""
    lines = [line.strip() for line in re.split(r'[\r\n]+',
                                               ANSI.sub('', text))]
    lines = [line for line in lines if line]
    return lines[-1] if lines else ''


@dataclasses.dataclass
class Outcome:
    """How one case went."""
    case: Case
    result: Optional[Result] = None
    seconds: float = 0.0
    skipped: str = ''
    traceback: bool = False
    changed: list = dataclasses.field(default_factory=list)
    wrong_exit: bool = False
    wrong_last: bool = False
    failed_check: str = ''

    @property
    def problems(self):
        found = []
        if self.wrong_exit:
            found.append('exit %s, expected %d' % (self.result.returncode,
                                                   self.case.status))
        if self.traceback:
            found.append('traceback')
        if self.wrong_last:
            found.append('last line does not match %r' % self.case.last)
        if self.changed:
            found.append('changed outside outputs: %s' % ', '.join(
                self.changed[:6]))
        if self.failed_check:
            found.append(self.failed_check)
        return found


def run_case(corpus, case, folder, available):
    """Set up, run and judge one case in ``folder`` (its own)."""
    if case.needs and not available[case.needs]:
        return Outcome(case, skipped='needs %s' % case.needs)
    case = resolved(case)
    os.makedirs(folder)
    env = corpus.env(folder)
    roots = (corpus.inputs, folder)
    try:
        if case.setup:
            case.setup(folder)
        before = tree_state(roots)
        start = time.time()
        result = (case.run or (lambda c, f, e: plain_run(c.argv, f, e)))(
            case, folder, env)
        seconds = time.time() - start
        after = tree_state(roots)
    finally:
        restore_permissions(folder, case.needs == 'chattr')
    outcome = Outcome(case, result, seconds)
    outcome.traceback = any(mark in text for mark in TRACEBACK_MARKS
                            for text in (result.stdout, result.stderr))
    outcome.changed = [os.path.relpath(p, os.path.dirname(folder)) for p in
                       changed_outside(before, after, [os.path.join(
                           folder, o) for o in case.outputs])]
    outcome.wrong_exit = result.returncode != case.status
    text = result.stdout if case.stream == 'stdout' else result.stderr
    outcome.wrong_last = not re.search(case.last, last_line(text))
    if case.check and not outcome.wrong_exit:
        try:
            outcome.failed_check = case.check(folder, result) or ''
        except Exception as e:  # e.g. a file the check reads is missing
            outcome.failed_check = 'check: %s: %s' % (type(e).__name__, e)
    return outcome


def restore_permissions(folder, immutable=False):
    """Undo the set-ups' chmod (and chattr +i) so the folder can go."""
    if immutable:
        subprocess.run(['chattr', '-R', '-i', folder], capture_output=True)
    for directory, dirs, files in os.walk(folder):
        for name in dirs + files:
            path = os.path.join(directory, name)
            if not os.path.islink(path):
                os.chmod(path, 0o755 if os.path.isdir(path) else 0o644)


def probe(scratch):
    """Which optional abilities this machine has."""
    os.makedirs(scratch)
    userns = shutil.which('unshare') is not None and subprocess.run(
        user_namespace('mount -t tmpfs -o size=4096 tmpfs %s' % scratch)
        + ['true'], capture_output=True).returncode == 0
    path = os.path.join(scratch, 'f')
    open(path, 'w').close()
    chattr = shutil.which('chattr') is not None and subprocess.run(
        ['chattr', '+i', path], capture_output=True).returncode == 0
    if chattr:
        subprocess.run(['chattr', '-i', path], capture_output=True)
    shutil.rmtree(scratch)
    return {'userns': userns, 'chattr': chattr,
            'read-only': userns if os.geteuid() == 0 else True}


def report_line(number, outcome):
    case = outcome.case
    if outcome.skipped:
        return 'skip %2d %s (%s)' % (number, case.name, outcome.skipped)
    text = outcome.result.stdout if case.stream == 'stdout' \
        else outcome.result.stderr
    line = '%s %2d %-58s exit %3d %5.1fs  %s' % (
        'FAIL' if outcome.problems else 'ok  ', number, case.name,
        outcome.result.returncode, outcome.seconds, last_line(text)[:100])
    if outcome.problems:
        line += '\n        ' + '; '.join(outcome.problems)
    return line


#: what :func:`tally` counts, in the figure's order
COUNTS = ('cases', 'tracebacks', 'files changed outside outputs',
          'wrong exits', 'wrong last lines', 'failed checks', 'skipped')


def tally(outcome):
    """One case's contribution to the figure: {name in COUNTS: int}."""
    if outcome.skipped:
        return dict.fromkeys(COUNTS, 0) | {'skipped': 1}
    return dict(zip(COUNTS, (1, int(outcome.traceback), len(outcome.changed),
                             int(outcome.wrong_exit), int(outcome.wrong_last),
                             int(bool(outcome.failed_check)), 0)))


def summary(tallies):
    """The figure of the :func:`tally` dicts ``tallies``, and whether any
    count of what went wrong is not 0."""
    total = {name: sum(t[name] for t in tallies) for name in COUNTS}
    text = 'reliability: ' + ', '.join(
        '%d %s' % (total[name], name) for name in COUNTS[:-1])
    if total['skipped']:
        text += ' (%d skipped)' % total['skipped']
    return text, any(total[name] for name in COUNTS[1:-1])
