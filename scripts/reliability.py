"""The reliability corpus (issue 14): misuse and bad input, run as commands.

    .venv/bin/python scripts/reliability.py [-k PATTERN] [--jobs N] [--keep]

builds its own inputs in a temporary folder (sklearn's digits as class
folders, the real Caffe LeNet of examples/lenet, odd and broken images,
broken model files, URL lists served by a local HTTP server), runs every
case as a subprocess (``python -m finetune.<command>``, or ``python -c``
for library calls) and checks for each:

* the exit status;
* the last line of stderr (or stdout): a pattern of what it must say;
* no ``Traceback`` and no ``Exception ignored`` in stdout or stderr;
* nothing changed outside the case's declared outputs: the file tree of the
  shared inputs and of the case's own folder (its working directory,
  ``HOME`` and ``TMPDIR``) is recorded (path, size, mtime_ns, sha1) before
  and after;
* for some, one more check (a report's rows, a file that must not be).

It prints one line per case, then the figure::

    reliability: 90 cases, 0 tracebacks, 0 files changed outside outputs, 0 wrong exits, 0 wrong last lines, 0 failed checks

and exits with status 1 when any of those counts but the first is not 0.
Cases that need what the machine lacks (a tmpfs or a read-only bind mount
in a user namespace, ``chattr +i``) are skipped and counted apart.
"""
import argparse
import concurrent.futures
import csv
import dataclasses
import fcntl
import gzip
import hashlib
import io
import os
import re
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from typing import Callable, Optional

import numpy as np
from PIL import Image

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from finetune.demo import LENET_DIR  # noqa: E402
from finetune.demo import convert_lenet  # noqa: E402
from finetune.demo import write_digit_folders  # noqa: E402
from finetune.models.model_file import read_model_meta  # noqa: E402
from tests.http_server import LocalHTTPServer  # noqa: E402
from tests.http_server import Response  # noqa: E402

PY = sys.executable
ASSETS = os.path.join(REPO, 'tests', 'assets')
TRACEBACK_MARKS = ('Traceback (most recent call last)', 'Exception ignored')
ANSI = re.compile(r'\x1b\[[0-9;]*[A-Za-z]')
TIMEOUT = 150
JPEG = 'image/jpeg'

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

#: ``python -c`` running ``python -m MODULE ARGS`` where no file may grow
#: past LIMIT bytes (what a full disk does to a write, without root)
FILE_SIZE_LIMIT = '''
import resource, runpy, signal, sys
limit = int(sys.argv.pop(1))
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
sys.argv[0] = sys.argv.pop(1)
runpy.run_module(sys.argv[0], run_name='__main__', alter_sys=True)
'''

#: images the commands must read (what, file in inputs/odd)
ODD_GOOD = [('a 1x1 image', 'one_pixel.png'), ('a CMYK JPEG', 'cmyk.jpg'),
            ('a 16-bit PNG', 'sixteen_bit.png'),
            ('an animated GIF', 'animated.gif'),
            ('an EXIF-rotated JPEG', 'exif_rotated.jpg'),
            ('a palette PNG', 'palette.png')]
#: images they must skip, with the reason (what, file, problem code)
ODD_BAD = [('a truncated JPEG', 'truncated.jpg', 'truncated-image'),
           ('a 0-byte PNG', 'empty.png', 'empty-file'),
           ('text named .jpg', 'text.jpg', 'not-image'),
           ('a decompression bomb', 'huge.png', 'too-large')]


# ---------------------------------------------------------------- model

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
    return [PY, '-m', 'finetune.' + name] + [str(a) for a in args]


def api(body):
    """``python -c`` running the lines ``body`` in :data:`API_SCRIPT`."""
    lines = ''.join('    %s\n' % line for line in body.strip().splitlines())
    return [PY, '-c', API_SCRIPT.format(body=lines)]


def exact(path):
    return re.escape(path)


def article(word):
    return ('an ' if word[0] in 'aeiou' else 'a ') + word


# ---------------------------------------------------------------- cases

def build_cases(corpus):
    """Every case: issue 14's items 1-16, then what was handled well."""
    return (argument_cases(corpus) + run_folder_cases(corpus) +
            model_file_cases(corpus) + disk_cases(corpus) +
            library_cases(corpus) + gather_cases(corpus) +
            data_cases(corpus) + image_cases(corpus) +
            output_cases(corpus))


def trainer(corpus):
    """``train(*args, data=...)``: the command line of a short LeNet run."""
    def train(*args, data=corpus.path('digits')):
        return module('train', '--data', data, '--pretrained',
                      corpus.path('lenet.npz'), '--replace', 'ip2', '-E',
                      '1', '-B', '16', '-j', '0', *args)
    return train


TRAINED = r'^report written to out \(see highest_loss\.csv'


def argument_cases(corpus):
    """9: impossible arguments, refused before anything is read."""
    train, lenet = trainer(corpus), corpus.path('lenet.npz')
    digits0 = corpus.path('digits', '0')
    cases = [Case('9 train %s %s' % (flag, value),
                  train('-o', 'out', flag, value), last='^error: ' + message)
             for flag, value, message in [
                 ('--val-split', '1', r'--val-split 1\.0: must be in '
                  r'\[0, 1\)$'),
                 ('--val-split', '-0.1', r'--val-split -0\.1: must be in '
                  r'\[0, 1\)$'),
                 ('--batchsize', '0', '--batchsize 0: must be >= 1$'),
                 ('--epochs', '0', '--epochs 0: must be >= 1$'),
                 ('--cache-crops', '0', '--cache-crops 0: must be >= 1$'),
                 ('--cache-crops', '-2', '--cache-crops -2: must be >= 1$'),
                 ('--freeze', 'conv9', "--freeze: unknown layer 'conv9'"),
                 ('--freeze', 'ip2', 'layers both replaced and frozen: '
                  'ip2$')]]
    cases.append(Case('9 train --replace a reversed range', module(
        'train', '--data', corpus.path('digits'), '--pretrained', lenet,
        '--replace', 'ip2-conv1', '-o', 'out'),
        last=r"^error: --replace: bad layer range 'ip2-conv1'"))
    cases += [Case('9 predict %s %s' % (flag, value), module(
        'predict', '--model', lenet, digits0, flag, value),
        last=r"%s: expected an integer >= 1, got '%s'$" % (name, value))
        for flag, value, name in [
            ('--batch', '0', 'argument -B/--batchsize/--batch'),
            ('--top', '0', 'argument --top'),
            ('--top', '-1', 'argument --top')]]
    cases.append(Case('9 export --batchsize 0', module(
        'export', '--model', lenet, '-o', 'm.onnx', '--batchsize', '0'),
        last=r"expected a positive integer or 'dynamic', not '0'$"))
    return cases


def run_folder_cases(corpus):
    """1, 2, 3, 10, 16: a run's --out, --resume, --lr-find, divergence."""
    train, path = trainer(corpus), corpus.path
    other = latest(path('other_run'))
    copy_other = copy_tree(path('other_run'), 'out')
    another_run = (r"^error: --resume: the snapshots are of another run "
                   r"\(--data differ: --data was '\S*digits2', now "
                   r"'\S*digits'\)")
    return [
        Case('10 train --resume a model file', train(
            '-o', 'out', '--resume', path('lenet.npz')),
            last=r'^error: --resume \S*lenet\.npz: not a trainer snapshot '
                 r'\(a model file: pass it as --pretrained to fine-tune it '
                 r'further\)$'),
        Case('10 train --resume a text file', train(
            '-o', 'out', '--resume', path('notes.txt')),
            last=r'^error: --resume \S*notes\.txt: not a readable snapshot '
                 r'\('),
        Case('10 train --resume a missing snapshot', train(
            '-o', 'out', '--resume', 'gone'),
            last=r'^error: --resume gone: not a readable snapshot \(.*No '
                 r'such file'),
        Case("10 train --resume another dataset's snapshot", train(
            '-o', 'out', '--resume', other), last=another_run),
        Case("1 a fresh run into another run's --out", train('-o', 'out'),
             setup=copy_other,
             last=r'^error: --out out holds snapshots of an earlier run; '
                  r'continue it with --resume auto, or choose another '
                  r'--out, or pass --overwrite to replace it$'),
        Case('1 --resume auto with another --data', train(
            '-o', 'out', '--resume', 'auto'), setup=copy_other,
            last=another_run),
        Case('1 --overwrite replaces the other run', train(
            '-o', 'out', '--overwrite'), status=0, setup=copy_other,
            outputs=('out',), stream='stdout', last=TRAINED,
            check=trained_on('out', 10)),
        Case("1 --lr-find into another run's --out", train(
            '-o', 'out', '--lr-find'), setup=copy_other,
            last=r'^error: --out out holds snapshots of an earlier run'),
        Case("1 --lr-find --resume auto on a run's own lists", trainer(
            corpus)('-o', 'out', '--lr-find', '--resume', 'auto',
                    data=path('digits2')), status=0, setup=copy_other,
            outputs=('out/lr_find.png', 'out/run.json', 'out/.lock'),
            stream='stdout',
            last=r'^suggested learning rate: \S+ \(--lr\); loss curve: '
                 r'out/lr_find\.png$'),
        Case('2 a second run on a locked --out', train('-o', 'out'),
             setup=lock_file('out'), run=while_locked('out'),
             last=r'^error: --out out: a training run is already using this '
                  r'folder \(pid %d\); wait for it or choose another --out$'
                  % os.getpid()),
        Case('3 --val-split 0 trains and says so', train(
            '-o', 'out', '--val-split', '0'), status=0, outputs=('out',),
            last=r'^no validation images: nothing is evaluated, '
                 r'model_best\.npz and the evaluation report are not '
                 r'written; model_final\.npz is the result$',
            check=without_validation('out')),
        Case('3 --resume auto of a run without validation', train(
            '-o', 'out', '--val-split', '0', '-E', '2', '--resume', 'auto'),
            status=0, setup=copy_tree(path('noval_run'), 'out'),
            outputs=('out',), last=r'^resuming from out/snapshot_iter_\d+$',
            check=without_validation('out')),
        Case('3 four images a class: no validation, said', train(
            '-o', 'out', data=path('four_per_class')), status=0,
            outputs=('out',), last=r'^no validation images: ',
            check=without_validation('out')),
        Case('16 divergence names a snapshot that exists', train(
            '-o', 'out', '--lr', '1e6', '-E', '3', '--val-split', '0',
            '--snapshot-interval', '2'), outputs=('out',),
            last=r'^error: training diverged \(NaN or inf weights\) by '
                 r'iteration \d+; lower --lr .*; (the last snapshot before '
                 r'it is \S+|no snapshot was taken before it)$',
            check=named_snapshots_exist()),
        Case('train interrupted with SIGINT (loader processes)', module(
            'train', '--data', path('digits'), '--pretrained',
            path('lenet.npz'), '--replace', 'ip2', '-E', '200', '-B', '8',
            '-o', 'out', '--snapshot-interval', '2'), status=130,
            run=interrupted_after_a_snapshot('out'), outputs=('out',),
            last=r'^interrupted; re-run the same command to continue$'),
    ]


def model_file_cases(corpus):
    """4, 5, 6, 8, 11, 14: model files, conversion, outputs that are
    inputs."""
    path, lenet = corpus.path, corpus.path('lenet.npz')
    digits0 = path('digits', '0')
    train = trainer(corpus)
    an_input = r'that is an input of this command; choose another output ' \
        r'file$'
    cases = [
        Case('4 predict --out the model file', module(
            'predict', '--model', lenet, digits0, '-o', lenet),
            last=r'^error: --out %s: %s' % (exact(lenet), an_input)),
        Case('4 predict --out an input image', module(
            'predict', '--model', lenet, digits0, '-o', first_file(digits0)),
            last=r'^error: --out %s: %s' % (exact(first_file(digits0)),
                                            an_input)),
        Case('4 export --onnx the model file', module(
            'export', '--model', lenet, '--onnx', lenet),
            last=r'^error: --out %s: %s' % (exact(lenet), an_input)),
        Case('5 convert again with a new --scale', module(
            'convert', 'lenet/lenet.caffemodel', '--prototxt',
            'lenet/lenet.prototxt', '--scale', '0.5'), status=0,
            setup=converted_lenet(corpus), outputs=('lenet/lenet.npz',),
            stream='stdout', last=r'^wrote lenet/lenet\.npz$',
            check=stored_scale('lenet/lenet.npz', 0.5)),
        Case('5 convert again with the same options', module(
            'convert', 'lenet/lenet.caffemodel', '--prototxt',
            'lenet/lenet.prototxt'), status=0, setup=converted_lenet(corpus),
            stream='stdout', last=r'^up to date: lenet/lenet\.npz$'),
        Case('5 train --pretrained X.caffemodel with another --prototxt',
             module('train', '--data', path('digits'), '--pretrained',
                    'lenet/lenet.caffemodel', '--prototxt',
                    'lenet/other.prototxt', '--replace', 'ip2', '-E', '1',
                    '-j', '0', '-o', 'out'), status=0,
             setup=trained_from_caffemodel(corpus), stream='stdout',
             last=TRAINED, outputs=('out', 'home/.cache/finetune'),
             check=cache_made_from('lenet/other.prototxt')),
        Case('6 convert --out an existing folder', module(
            'convert', path('lenet', 'lenet.caffemodel'), '--prototxt',
            path('lenet', 'lenet.prototxt'), '-o', 'models'), status=0,
            setup=mkdirs('models'), outputs=('models',), stream='stdout',
            last=r'^wrote models/lenet\.npz$'),
        Case('6 convert --out a file that is not .npz', module(
            'convert', path('lenet', 'lenet.caffemodel'), '--prototxt',
            path('lenet', 'lenet.prototxt'), '-o', 'model.bin'),
            last=r'^error: model\.bin: the output must be a \.npz file or '
                 r'an existing folder$'),
        Case('8 train --pretrained a caffemodel in a read-only folder',
             module('train', '--data', path('digits'), '--pretrained',
                    'ro/lenet.caffemodel', '--prototxt', 'ro/lenet.prototxt',
                    '--replace', 'ip2', '-E', '1', '-j', '0', '-o', 'out'),
             status=0, setup=read_only(lenet_files), run=in_read_only('ro'),
             needs='read-only', outputs=('out', 'home/.cache/finetune'),
             stream='stdout', last=TRAINED),
        Case('14 convert --mean 1,2 for a one-channel net', module(
            'convert', path('lenet', 'lenet.caffemodel'), '--prototxt',
            path('lenet', 'lenet.prototxt'), '--mean', '1,2', '-o', 'm.npz'),
            last=r'^error: --mean: 2 channel\(s\) for a net with 1 input '
                 r'channel\(s\)$'),
        Case('train --pretrained a missing caffemodel', train(
            '-o', 'out')[:6] + ['gone.caffemodel'] + train('-o', 'out')[7:],
            last=r'^error: gone\.caffemodel: no such caffemodel'),
        Case('predict --model a caffemodel', module(
            'predict', '--model', path('lenet', 'lenet.caffemodel'),
            digits0), last=r'give the \.npz model file'),
        Case('convert a missing caffemodel', module(
            'convert', 'gone.caffemodel'),
            last=r'^error: gone\.caffemodel: no such caffemodel; give a '
                 r'\.caffemodel file or a registry name'),
        Case('fetch an unknown name', module('fetch', 'nonet'),
             last=r"invalid choice: 'nonet'"),
    ]
    for kind in ('truncated', 'empty', 'text'):
        model = path(kind + '.npz')
        broken = r'%s: cannot read model file: ' % exact(model)
        cases += [
            Case('11 predict %s model file' % article(kind), module(
                'predict', '--model', model, digits0),
                last=r'^error: ' + broken),
            Case('11 export %s model file' % article(kind), module(
                'export', '--model', model, '-o', 'm.onnx'),
                last=r'^error: ' + broken),
            Case('11 finetune.load %s model file' % article(kind),
                 api('finetune.load(%r)' % model),
                 last=r'^error: CheckpointError: ' + broken),
            Case('11 train --pretrained %s model file' % article(kind),
                 module('train', '--data', path('digits'), '--pretrained',
                        model, '--replace', 'ip2', '-o', 'out'),
                 last=r'^error: ' + broken)]
    return cases


def disk_cases(corpus):
    """12: a full disk during training."""
    train = trainer(corpus)
    return [
        Case('12 train with a file-size limit (EFBIG)',
             [PY, '-c', FILE_SIZE_LIMIT, str(10 ** 6), 'finetune.train'] +
             train('-o', 'out')[3:], outputs=('out',),
             last=r"^error: \[Errno 27\] File too large: "
                  r"'out/model_best\.npz'$",
             check=nothing_named('out', 'tmp')),
        Case('12 train on a full tmpfs (ENOSPC)', train('-o', 'disk/out'),
             setup=mkdirs('disk'), run=on_tmpfs('disk', 10 ** 6),
             needs='userns', outputs=('disk',),
             last=r"^error: \[Errno 28\] No space left on device: "
                  r"'disk/out/model_best\.npz'$"),
    ]


def library_cases(corpus):
    """13: finetune.load(...).predict of a path, an array, bad images."""
    lenet, upright = corpus.path('lenet.npz'), corpus.path('odd',
                                                           'upright.png')
    return [
        Case('13 predict one path', api(
            'labels, probs = finetune.load(%r).predict(%r)\n'
            'print(len(labels), probs.shape)' % (lenet, upright)),
            status=0, stream='stdout', last=r'^1 \(1, 10\)$'),
        Case('13 predict an HWC uint8 array', api(
            'a = np.asarray(Image.open(%r).convert("RGB"))\n'
            'print(a.shape, finetune.load(%r).predict(a)[1].shape)'
            % (upright, lenet)), status=0, stream='stdout',
            last=r'^\(28, 28, 3\) \(1, 10\)$'),
        Case('13 predict a 0x0 PIL image', api(
            'finetune.load(%r).predict(Image.new("RGB", (0, 0)))' % lenet),
            last=r'^error: DataError: empty image \(0x0\)$'),
        Case('13 predict a float array', api(
            'finetune.load(%r).predict(np.zeros((4, 4, 3)))' % lenet),
            last=r'^error: DataError: array of shape \(4, 4, 3\) and dtype '
                 r'float64: expected uint8'),
        Case('predict an EXIF-rotated photo as it is shown', api(
            'm = finetune.load(%r)\n'
            'a, b = m.predict([%r, %r])[1]\n'
            'print(a.argmax() == b.argmax(), abs(a - b).max() < 0.05)'
            % (lenet, corpus.path('odd', 'exif_rotated.jpg'), upright)),
            status=0, stream='stdout', last=r'^True True$'),
    ]


def gather_cases(corpus):
    """7, 15, 16 and hostile lists: finetune.gather."""
    lists = lambda name: corpus.path('lists', name)  # noqa: E731
    quick = ('-o', 'photos', '--no-progress')
    report = 'photos/gather_report.csv'
    return [
        Case('7 gather from a host that trickles bytes', module(
            'gather', lists('trickle.txt'), *quick, '--timeout', '1',
            '--retries', '0'), status=0, outputs=('photos',),
            stream='stdout', last=r'^deadline\s+1$',
            check=report_counts(report, saved=1, deadline=1)),
        Case('15 gather a semicolon CSV', module(
            'gather', lists('semicolon.csv'), *quick), status=0,
            outputs=('photos',), stream='stdout',
            last=r'^gather: 2 saved, 0 already present, 0 skipped'),
        Case('15 gather a tab-separated CSV', module(
            'gather', lists('tabs.tsv'), *quick), status=0,
            outputs=('photos',), stream='stdout',
            last=r'^gather: 2 saved, 0 already present, 0 skipped'),
        Case('16 gather SIGKILLed, then run again', module(
            'gather', lists('kill.txt'), *quick, '--timeout', '30',
            '--retries', '0'), status=0, run=killed_then_rerun(corpus),
            outputs=('photos',), stream='stdout',
            last=r'^gather: 1 saved, 1 already present, 0 skipped',
            check=nothing_named('photos', '.partial')),
        Case('gather labels that are paths, and file:// URLs', module(
            'gather', lists('hostile.txt'), *quick), status=0,
            outputs=('photos',), stream='stdout', last=r'^bad-url\s+2$',
            check=report_counts(report, saved=1, **{'bad-label': 5,
                                                    'bad-url': 2})),
        Case('gather a missing list', module('gather', 'gone.txt', *quick),
             last=r'^error: gone\.txt: cannot read the URL list'),
        Case('gather a corrupt gzip list', module(
            'gather', lists('corrupt.csv.gz'), *quick),
            last=r'corrupt\.csv\.gz: cannot read the URL list'),
        Case('gather a CSV without the URL column', module(
            'gather', lists('no_url_column.csv'), *quick, '--url-column',
            'image_url'), last=r"no column 'image_url' \(columns: link, "
                                r"label\)$"),
    ]


def data_cases(corpus):
    """16 and folders: what training reads."""
    train, path = trainer(corpus), corpus.path
    return [
        Case('16 hidden and non-image files are listed in problems.csv',
             train('-o', 'out', data=path('with_extras')), status=0,
             outputs=('out',), stream='stdout', last=TRAINED,
             check=problems_listed('out', {'0/.DS_Store': 'hidden-file',
                                           '1/notes.txt':
                                           'not-an-image-extension'})),
        Case('16 predict follows a symlinked class folder', module(
            'predict', '--model', path('lenet.npz'), path('linked'), '-o',
            'p.csv', '-j', '0'), status=0, outputs=('p.csv',),
            last=r'^\d+ images labelled, 0 skipped -> p\.csv$',
            check=predicted_under('p.csv', 'linked/seven/')),
        Case('train --data a missing folder', train('-o', 'out',
                                                    data='nope'),
             last=r'^error: nope: not a folder$'),
        Case('train --data a file', train('-o', 'out', data=path('notes.txt')),
             last=r'^error: \S*notes\.txt: not a folder$'),
        Case('train --data an empty folder', train('-o', 'out',
                                                   data='empty'),
             setup=mkdirs('empty'),
             last=r'^error: empty: found 0 class folder\(s\) with images '
                  r'\(none\); need at least 2, one sub-folder of images per '
                  r'class$'),
        Case('train --data one class', train('-o', 'out',
                                             data=path('one_class')),
             last=r'^error: \S*one_class: found 1 class folder\(s\) with '
                  r'images \(3\); need at least 2'),
        Case('train --label-file missing', train(
            '-o', 'out', '--label-file', 'gone.txt'),
            last=r'^error: gone\.txt'),
        Case('train on unicode paths', train(
            '-o', 'sortie été', data=path('données')), status=0,
            outputs=('sortie été',), stream='stdout',
            last=r'^report written to sortie été '),
        Case('train on symlinked class folders and files', train(
            '-o', 'out', data=path('linked')), status=0, outputs=('out',),
            stream='stdout', last=TRAINED, check=trained_on(
                'out', 2, 'one/link-', 'seven/')),
        Case('train on broken, huge and odd images', train(
            '-o', 'out', data=path('odd_classes')), status=0,
            outputs=('out',), stream='stdout', last=TRAINED,
            check=problems_listed('out', {'bad/' + name: problem for
                                          _, name, problem in ODD_BAD})),
    ]


def image_cases(corpus):
    """Odd and broken images, one predict each."""
    lenet = corpus.path('lenet.npz')
    cases = [Case('predict %s' % kind, module(
        'predict', '--model', lenet, corpus.path('odd', name), '-j', '0'),
        status=0, stream='stdout', last=r'^\d\.\d{4}\s+\S+$')
        for kind, name in ODD_GOOD]
    cases += [Case('predict %s' % kind, module(
        'predict', '--model', lenet, corpus.path('odd', name), '-j', '0'),
        status=1, last=r': skipped: \S+: %s$' % problem)
        for kind, name, problem in ODD_BAD]
    cases += [
        Case('predict a missing image', module(
            'predict', '--model', lenet, 'gone.jpg'),
            last=r'^error: gone\.jpg: no such file or folder$'),
        Case('predict a folder without images', module(
            'predict', '--model', lenet, 'empty'), setup=mkdirs('empty'),
            last=r'^error: no images found in empty$'),
    ]
    return cases


def output_cases(corpus):
    """Read-only and immutable outputs."""
    train, lenet = trainer(corpus), corpus.path('lenet.npz')
    refused = r"^error: \[Errno (30|13)\] (Read-only file system|Permission " \
        r"denied): '%s'$"
    immutable = r"^error: \[Errno 1\] Operation not permitted: '%s'$"
    predict = module('predict', '--model', lenet, corpus.path('digits', '0'),
                     '-j', '0', '-o')
    return [
        Case('train --out in a read-only folder', train('-o', 'ro/out'),
             setup=read_only(mkdirs()), run=in_read_only('ro'),
             needs='read-only', last=refused % 'ro/out'),
        Case('predict -o into a read-only folder', predict + ['ro/p.csv'],
             setup=read_only(mkdirs()), run=in_read_only('ro'),
             needs='read-only', last=refused % r'ro/p\.csv'),
        Case('predict -o an immutable file', predict + ['p.csv'],
             setup=immutable_file('p.csv'), needs='chattr',
             last=immutable % r'p\.csv'),
        Case('train when model_final.npz is immutable', train(
            '-o', 'out', '--val-split', '0'),
            setup=immutable_file('out/model_final.npz'), needs='chattr',
            outputs=('out',), last=immutable % r'out/model_final\.npz'),
        Case('convert onto an immutable .npz', module(
            'convert', corpus.path('lenet', 'lenet.caffemodel'),
            '--prototxt', corpus.path('lenet', 'lenet.prototxt'), '-o',
            'm.npz'), setup=immutable_file('m.npz'), needs='chattr',
            last=immutable % r'm\.npz'),
    ]


# ---------------------------------------------------------------- setups

def mkdirs(*names):
    def setup(folder):
        for name in names:
            os.makedirs(os.path.join(folder, name), exist_ok=True)
    return setup


def copy_tree(source, name):
    return lambda folder: shutil.copytree(source, os.path.join(folder, name),
                                          symlinks=True)


def first_file(directory):
    return os.path.join(directory, sorted(os.listdir(directory))[0])


def latest(run):
    """The newest snapshot in the run folder ``run``."""
    names = [n for n in os.listdir(run) if n.startswith('snapshot_iter_')]
    return os.path.join(run, max(names, key=lambda n: int(n.split('_')[-1])))


def lenet_files(directory):
    """The real LeNet's caffemodel and prototxt copied into ``directory``
    (lenet.caffemodel, lenet.prototxt; other.prototxt: the same net in
    another file)."""
    os.makedirs(directory, exist_ok=True)
    shutil.copy(os.path.join(LENET_DIR, 'lenet_iter_10000.caffemodel'),
                os.path.join(directory, 'lenet.caffemodel'))
    prototxt = os.path.join(LENET_DIR, 'lenet_deploy.prototxt')
    shutil.copy(prototxt, os.path.join(directory, 'lenet.prototxt'))
    with open(prototxt) as f:
        text = f.read()
    with open(os.path.join(directory, 'other.prototxt'), 'w') as f:
        f.write('# the same net, another definition file\n' + text)


def converted_lenet(corpus):
    def setup(folder):
        lenet_files(os.path.join(folder, 'lenet'))
        run_quietly(corpus, folder, module(
            'convert', 'lenet/lenet.caffemodel', '--prototxt',
            'lenet/lenet.prototxt'))
    return setup


def trained_from_caffemodel(corpus):
    """A run from lenet.caffemodel + lenet.prototxt (converted into the
    case's HOME cache), its folder removed."""
    def setup(folder):
        lenet_files(os.path.join(folder, 'lenet'))
        run_quietly(corpus, folder, module(
            'train', '--data', corpus.path('digits'), '--pretrained',
            'lenet/lenet.caffemodel', '--prototxt', 'lenet/lenet.prototxt',
            '--replace', 'ip2', '-E', '1', '-j', '0', '-o', 'first'))
        shutil.rmtree(os.path.join(folder, 'first'))
    return setup


def read_only(fill):
    """Set-up: ``fill(folder/ro)`` then take write permissions away."""
    def setup(folder):
        target = os.path.join(folder, 'ro')
        os.makedirs(target, exist_ok=True)
        fill(target)
        for directory, _, files in os.walk(target):
            for name in files:
                os.chmod(os.path.join(directory, name), 0o444)
            os.chmod(directory, 0o555)
    return setup


def immutable_file(name):
    def setup(folder):
        path = os.path.join(folder, name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, 'w') as f:
            f.write('kept\n')
        subprocess.run(['chattr', '+i', path], check=True,
                       capture_output=True)
    return setup


def run_quietly(corpus, folder, argv):
    """A set-up command in ``folder``; raises if it fails."""
    result = subprocess.run(argv, cwd=folder, env=corpus.env(folder),
                            capture_output=True, text=True, timeout=TIMEOUT)
    if result.returncode != 0:
        raise RuntimeError('set-up %s failed: %s'
                           % (' '.join(argv[1:4]), result.stderr[-2000:]))


# ---------------------------------------------------------------- runners

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


def lock_file(out):
    """Set-up: ``out/.lock`` naming this process, as a running training
    writes it."""
    def setup(folder):
        os.makedirs(os.path.join(folder, out))
        with open(os.path.join(folder, out, '.lock'), 'w') as f:
            f.write('pid %d' % os.getpid())
    return setup


def while_locked(out):
    """Run the case while this process holds ``out/.lock`` (flock), as a
    running training does."""
    def run(case, folder, env):
        with open(os.path.join(folder, out, '.lock')) as f:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX)
            return plain_run(case.argv, folder, env)
    return run


def user_namespace(*mount_commands):
    """``unshare`` running shell ``mount_commands``, then the command."""
    script = ' && '.join(mount_commands + ('exec "$@"',))
    return ['unshare', '--user', '--map-root-user', '--mount', 'sh', '-c',
            script, 'sh']


def on_tmpfs(directory, size):
    """Run the case with a ``size``-byte tmpfs mounted on ``directory``."""
    def run(case, folder, env):
        return plain_run(user_namespace(
            'mount -t tmpfs -o size=%d tmpfs %s' % (size, directory))
            + case.argv, folder, env)
    return run


def in_read_only(directory):
    """Run the case with ``directory`` read-only: for root (whom permissions
    do not stop) a read-only bind mount in a user namespace; for others the
    set-up's chmod."""
    def run(case, folder, env):
        if os.geteuid() != 0:
            return plain_run(case.argv, folder, env)
        return plain_run(user_namespace(
            'mount --bind %s %s' % (directory, directory),
            'mount -o remount,ro,bind %s' % directory) + case.argv,
            folder, env)
    return run


def wait_for(condition, timeout=60):
    deadline = time.time() + timeout
    while not condition():
        if time.time() > deadline:
            return False
        time.sleep(0.02)
    return True


def _listdir(path):
    try:
        return os.listdir(path)
    except OSError:
        return []


def _finish(proc):
    try:
        stdout, stderr = proc.communicate(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        stdout, stderr = proc.communicate()
        stderr += '\n(timed out)'
    return Result(proc.returncode, stdout, stderr)


def interrupted_after_a_snapshot(out):
    """Start the case; SIGINT it once a snapshot is written."""
    def run(case, folder, env):
        proc = subprocess.Popen(
            case.argv, cwd=folder, env=env, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True, start_new_session=True,
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        wait_for(lambda: any(name.startswith('snapshot_iter_') for name in
                             _listdir(os.path.join(folder, out))))
        proc.send_signal(signal.SIGINT)
        return _finish(proc)
    return run


def killed_then_rerun(corpus):
    """SIGKILL the case's gather while it waits for a slow host, then run
    it again (the host now answers): the second run's result."""
    def run(case, folder, env):
        image = corpus.images['b']
        corpus.server.route('/kill/slow.jpg',
                            Response(image, content_type=JPEG, delay=60),
                            Response(image, content_type=JPEG))
        journal = os.path.join(folder, 'photos', '.gather_report.csv.partial')

        def journaled():
            with open(journal) as f:
                return '/kill/fast.jpg' in f.read()
        proc = subprocess.Popen(case.argv, cwd=folder, env=env,
                                stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL,
                                start_new_session=True)
        wait_for(lambda: os.path.exists(journal) and journaled() and
                 corpus.server.requests_for('/kill/slow.jpg'))
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        if not os.path.exists(journal):
            return Result(-9, '', 'no journal after SIGKILL')
        return plain_run(case.argv, folder, env)
    return run


# ---------------------------------------------------------------- checks

def read_csv(path):
    with open(path, newline='', encoding='utf-8') as f:
        return list(csv.DictReader(f))


def trained_on(out, n_classes, *listed):
    """model_final.npz written, ``n_classes`` classes, and train.txt or
    val.txt holding paths with each of ``listed`` in them."""
    def check(folder, result):
        run = os.path.join(folder, out)
        with open(os.path.join(run, 'labels.txt')) as f:
            names = f.read().split()
        if len(names) != n_classes:
            return 'labels.txt has %d classes, not %d' % (len(names),
                                                         n_classes)
        if not os.path.exists(os.path.join(run, 'model_final.npz')):
            return 'no model_final.npz'
        lists = ''.join(open(os.path.join(run, name)).read()
                        for name in ('train.txt', 'val.txt'))
        missing = [text for text in listed if text not in lists]
        if missing:
            return 'the lists hold no %s' % ', '.join(missing)
    return check


def without_validation(out):
    def check(folder, result):
        run = os.path.join(folder, out)
        if os.path.exists(os.path.join(run, 'model_best.npz')):
            return 'wrote model_best.npz without validation'
        if not os.path.exists(os.path.join(run, 'model_final.npz')):
            return 'no model_final.npz'
    return check


def stored_scale(path, scale):
    def check(folder, result):
        stored = read_model_meta(os.path.join(folder, path))['conversion']
        if stored['scale'] != scale:
            return 'stored scale %r' % stored['scale']
    return check


def cache_made_from(prototxt):
    """The one converted file in the case's cache is of ``prototxt``."""
    def check(folder, result):
        with open(os.path.join(folder, prototxt), 'rb') as f:
            digest = hashlib.sha1(f.read()).hexdigest()
        cache = os.path.join(folder, 'home', '.cache', 'finetune',
                             'converted')
        files = [n for n in _listdir(cache) if n.endswith('.npz')]
        if len(files) != 1:
            return 'the conversion cache holds %s' % files
        stored = read_model_meta(os.path.join(cache, files[0]))['conversion']
        if stored['prototxt_sha1'] != digest:
            return 'the cached conversion is of another prototxt'
    return check


def report_counts(path, **expected):
    """The gather report has exactly these counts of statuses/reasons."""
    def check(folder, result):
        counts = {}
        for row in read_csv(os.path.join(folder, path)):
            key = row['reason'] or row['status']
            counts[key] = counts.get(key, 0) + 1
        if counts != expected:
            return 'report counts %s, expected %s' % (counts, expected)
    return check


def problems_listed(out, expected):
    def check(folder, result):
        with open(os.path.join(folder, out, 'problems.csv'), newline='',
                  encoding='utf-8') as f:
            rows = {row[0]: row[1] for row in list(csv.reader(f))[1:]}
        wrong = {k: rows.get(k) for k, v in expected.items()
                 if not (rows.get(k) or '').startswith(v)}
        if wrong:
            return 'problems.csv: %s' % wrong
    return check


def predicted_under(path, prefix):
    def check(folder, result):
        rows = read_csv(os.path.join(folder, path))
        if not any(prefix in row['path'] and row['label'] for row in rows):
            return 'nothing predicted under %s' % prefix
    return check


def named_snapshots_exist():
    def check(folder, result):
        named = re.findall(r'\S*snapshot_iter_\d+', last_line(result.stderr))
        gone = [n for n in named if not os.path.exists(os.path.join(folder,
                                                                    n))]
        if gone:
            return 'names snapshots that do not exist: %s' % gone
    return check


def nothing_named(directory, part):
    def check(folder, result):
        left = [n for n in _listdir(os.path.join(folder, directory))
                if part in n]
        if left:
            return 'left in %s: %s' % (directory, left)
    return check


# ---------------------------------------------------------------- inputs

def build_inputs(corpus):
    """Write every input the cases read (and route the URLs on the
    server); two short runs give the snapshots the run-folder cases use."""
    path = corpus.path
    write_digit_folders(path('digits'), train_fraction=0.05)
    write_digit_folders(path('digits_b'), train_fraction=0.05, seed=1)
    os.makedirs(path('digits2'))
    for label in ('0', '1', '2'):
        os.rename(path('digits_b', label), path('digits2', label))
    shutil.rmtree(path('digits_b'))
    convert_lenet(corpus.inputs)
    lenet_files(path('lenet'))
    with open(path('notes.txt'), 'w') as f:
        f.write('not a snapshot\n')
    write_broken_models(corpus.inputs)
    write_odd_images(path('odd'))
    write_folders(corpus.inputs)
    write_lists(corpus, path('lists'))
    scratch = tempfile.mkdtemp(dir=os.path.dirname(corpus.inputs))
    for name, data, extra in (('other_run', path('digits2'), []),
                              ('noval_run', path('digits'),
                               ['--val-split', '0'])):
        run_quietly(corpus, scratch, module(
            'train', '--data', data, '--pretrained', path('lenet.npz'),
            '--replace', 'ip2', '-E', '1', '-B', '16', '-j', '0', '-o',
            path(name), *extra))
    shutil.rmtree(scratch)


def write_broken_models(directory):
    with open(os.path.join(directory, 'lenet.npz'), 'rb') as f:
        data = f.read()
    for name, content in (('truncated', data[:len(data) // 2]),
                          ('empty', b''), ('text', b'not a model\n')):
        with open(os.path.join(directory, name + '.npz'), 'wb') as f:
            f.write(content)


def digit_image():
    """A 28x28 sklearn digit '7', MNIST-style, as the LeNet reads it."""
    from sklearn.datasets import load_digits
    ink = (load_digits().images[7] * (255.0 / 16)).astype(np.uint8)
    canvas = Image.new('L', (28, 28), 0)
    canvas.paste(Image.fromarray(ink).resize((20, 20), Image.BILINEAR),
                 (4, 4))
    return canvas


def write_odd_images(directory):
    """Good images in unusual forms, and broken ones."""
    os.makedirs(directory)
    j = lambda name: os.path.join(directory, name)  # noqa: E731
    digit = digit_image()
    digit.save(j('upright.png'))
    Image.new('RGB', (1, 1), (200, 30, 40)).save(j('one_pixel.png'))
    digit.convert('CMYK').save(j('cmyk.jpg'), quality=95)
    Image.fromarray(np.asarray(digit, np.uint16) * 257).save(
        j('sixteen_bit.png'))
    frames = [digit.convert('P'), digit.rotate(90).convert('P')]
    frames[0].save(j('animated.gif'), save_all=True,
                   append_images=frames[1:], duration=100, loop=0)
    digit.convert('P').save(j('palette.png'))
    # stored turned a quarter left, tagged to be shown turned back (EXIF
    # Orientation 6), as phone cameras write
    exif = Image.Exif()
    exif[0x0112] = 6
    digit.transpose(Image.ROTATE_90).save(j('exif_rotated.jpg'),
                                          quality=100, exif=exif)
    with open(os.path.join(ASSETS, 'cat.jpg'), 'rb') as f:
        photo = f.read()
    with open(j('truncated.jpg'), 'wb') as f:
        f.write(photo[:len(photo) // 2])
    open(j('empty.png'), 'wb').close()
    with open(j('text.jpg'), 'w') as f:
        f.write('just some text\n')
    # 2.1x PIL's decompression-bomb limit, a few kB on disk
    side = int((2.1 * Image.MAX_IMAGE_PIXELS) ** 0.5)
    Image.new('1', (side, side)).save(j('huge.png'))


def write_folders(inputs):
    """Class folders: few images, extras, links, unicode, odd images."""
    j = lambda *parts: os.path.join(inputs, *parts)  # noqa: E731

    def copy_class(source, target, count=None):
        os.makedirs(target, exist_ok=True)
        for name in sorted(os.listdir(source))[:count]:
            shutil.copy(os.path.join(source, name), target)

    for label in ('0', '1', '2'):
        copy_class(j('digits', label), j('four_per_class', label), 4)
    copy_class(j('digits', '3'), j('one_class', '3'), 3)
    for label in ('0', '1'):
        copy_class(j('digits', label), j('with_extras', label))
    with open(j('with_extras', '0', '.DS_Store'), 'wb') as f:
        f.write(b'\0\0\0\1Bud1')
    with open(j('with_extras', '1', 'notes.txt'), 'w') as f:
        f.write('a note\n')
    os.makedirs(j('linked'))  # a class folder and an image that are links
    copy_class(j('digits', '7'), j('elsewhere', 'seven'))
    os.symlink(j('elsewhere', 'seven'), j('linked', 'seven'))
    copy_class(j('digits', '1'), j('linked', 'one'))
    first = sorted(os.listdir(j('digits', '1')))[0]
    os.symlink(j('digits', '1', first), j('linked', 'one', 'link-' + first))
    for label, name in (('0', 'chat é'), ('1', '猫')):
        os.makedirs(j('données', name))
        for i, file in enumerate(sorted(os.listdir(j('digits', label)))):
            shutil.copy(j('digits', label, file),
                        j('données', name, 'image %d ß.png' % i))
    for label in ('2', '5'):
        copy_class(j('digits', label), j('odd_classes', label))
    for _, name in ODD_GOOD:
        shutil.copy(j('odd', name), j('odd_classes', '5', 'odd-' + name))
    copy_class(j('digits', '8'), j('odd_classes', 'bad'), 4)
    for _, name, _ in ODD_BAD:
        shutil.copy(j('odd', name), j('odd_classes', 'bad', name))


def image_bytes(seed):
    pixels = np.random.RandomState(seed).randint(0, 256, (40, 48, 3),
                                                 dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format='JPEG')
    return buffer.getvalue()


def write_lists(corpus, directory):
    """URL lists, their URLs routed on the corpus's server."""
    os.makedirs(directory)
    server, images = corpus.server, corpus.images
    images.update(a=image_bytes(1), b=image_bytes(2), c=image_bytes(3))
    server.route('/a.jpg', Response(images['a'], content_type=JPEG))
    server.route('/b.jpg', Response(images['b'], content_type=JPEG))
    server.route('/trickle.jpg', Response(images['c'], content_type=JPEG,
                                          trickle=(10, 0.2)))
    server.route('/kill/fast.jpg', Response(images['a'], content_type=JPEG))
    url = server.url
    lists = {
        'trickle.txt': '%s cat\n%s dog\n' % (url('/a.jpg'),
                                            url('/trickle.jpg')),
        'semicolon.csv': 'url;label\n%s;cat\n%s;dog\n' % (url('/a.jpg'),
                                                          url('/b.jpg')),
        'tabs.tsv': 'url\tlabel\n%s\tcat\n%s\tdog\n' % (url('/a.jpg'),
                                                        url('/b.jpg')),
        'kill.txt': '%s cat\n%s dog\n' % (url('/kill/fast.jpg'),
                                         url('/kill/slow.jpg')),
        'hostile.txt': ''.join('%s %s\n' % line for line in [
            (url('/a.jpg'), '../escape'), (url('/a.jpg'), '/etc'),
            (url('/b.jpg'), '.hidden'), (url('/b.jpg'), 'a/b'),
            (url('/b.jpg'), '..'), ('file:///etc/passwd', 'cat'),
            ('ftp://example.com/x', 'cat'), (url('/a.jpg'), 'cat')]),
        'no_url_column.csv': 'link,label\n%s,cat\n' % url('/a.jpg'),
    }
    for name, text in lists.items():
        with open(os.path.join(directory, name), 'w') as f:
            f.write(text)
    data = gzip.compress(b'url,label\n' * 50)
    with open(os.path.join(directory, 'corrupt.csv.gz'), 'wb') as f:
        f.write(data[:30] + b'\xff' * 20 + data[50:])


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


def summary(outcomes):
    """The figure, and whether any count of what went wrong is not 0."""
    ran = [o for o in outcomes if not o.skipped]
    counts = (len(ran), sum(o.traceback for o in ran),
              sum(len(o.changed) for o in ran), sum(o.wrong_exit for o in ran),
              sum(o.wrong_last for o in ran),
              sum(bool(o.failed_check) for o in ran))
    text = ('reliability: %d cases, %d tracebacks, %d files changed outside '
            'outputs, %d wrong exits, %d wrong last lines, %d failed checks'
            % counts)
    if len(ran) < len(outcomes):
        text += ' (%d skipped)' % (len(outcomes) - len(ran))
    return text, any(counts[1:])


def run_all(corpus, cases, root, available, jobs):
    """Run ``cases``, ``jobs`` at once, printing a line as each ends."""
    outcomes = [None] * len(cases)
    with concurrent.futures.ThreadPoolExecutor(max_workers=jobs) as pool:
        futures = {pool.submit(run_case, corpus, case, os.path.join(
            root, 'case-%02d' % (i + 1)), available): i
            for i, case in enumerate(cases)}
        for future in concurrent.futures.as_completed(futures):
            i = futures[future]
            outcomes[i] = future.result()
            print(report_line(i + 1, outcomes[i]), flush=True)
    return outcomes


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('-k', dest='pattern',
                        help='only the cases whose name matches this regex')
    parser.add_argument('--jobs', type=int, default=2,
                        help='cases run at once (default 2)')
    parser.add_argument('--keep', action='store_true',
                        help='keep the temporary folder (its path is '
                        'printed)')
    args = parser.parse_args(argv)
    start = time.time()
    root = tempfile.mkdtemp(prefix='finetune-reliability-')
    try:
        with LocalHTTPServer() as server:
            corpus = Corpus(os.path.join(root, 'inputs'), server, {},
                            os.path.join(root, 'matplotlib'))
            build_inputs(corpus)
            available = probe(os.path.join(root, 'probe'))
            cases = [c for c in build_cases(corpus)
                     if not args.pattern or re.search(args.pattern, c.name)]
            print('reliability: %d cases; inputs built in %.0f s' % (
                len(cases), time.time() - start), flush=True)
            outcomes = run_all(corpus, cases, os.path.join(root, 'cases'),
                               available, args.jobs)
    finally:
        if args.keep:
            print('kept %s' % root)
        else:
            restore_permissions(root, immutable=True)
            shutil.rmtree(root, ignore_errors=True)
    text, failed = summary(outcomes)
    print('%s; %.0f s' % (text, time.time() - start))
    return 1 if failed else 0


if __name__ == '__main__':
    sys.exit(main())
