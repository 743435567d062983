"""Running the commands in subprocesses, and reading what they leave."""
import os
import subprocess
import sys


def run_module(*args, timeout=300, **kwargs):
    """``python -m ARGS...`` in a subprocess: the CompletedProcess (text)."""
    return subprocess.run([sys.executable, '-m'] + list(args),
                          capture_output=True, text=True, timeout=timeout,
                          **kwargs)


def one_error_line(result):
    """The single stderr line of a run that must exit with status 2."""
    assert result.returncode == 2, result.stderr[-2000:]
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr[-2000:]
    return lines[0]


def folder_state(folder):
    """{path: (size, mtime_ns, bytes)} of the files under ``folder``."""
    state = {}
    for directory, _, names in os.walk(folder):
        for name in names:
            path = os.path.join(directory, name)
            with open(path, 'rb') as f:
                state[path] = (os.stat(path).st_size,
                               os.stat(path).st_mtime_ns, f.read())
    return state


class RunsCommand:
    """Unpickling it runs ``touch <marker>`` (what an attacker would do)."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, ('touch %s' % self.marker,)
