"""The reliability corpus's cases: misuse and bad input, each a command
and what must come of it (see :mod:`tests.reliability.judge`).

:func:`build_cases` lists them all: issue 14's items first (their number
leads the name), then what was handled well before.
"""
import csv
import fcntl
import hashlib
import os
import re
import shutil
import signal
import subprocess
import time

from finetune.models.model_file import read_model_meta
from finetune.training.extensions import latest_snapshot
from tests.support.http_server import Response
from tests.reliability.hostile import hostile_cases
from tests.reliability.hostile import misuse_cases
from tests.reliability.inputs import JPEG
from tests.reliability.inputs import ODD_BAD
from tests.reliability.inputs import ODD_GOOD
from tests.reliability.inputs import lenet_files
from tests.reliability.inputs import run_quietly
from tests.reliability.judge import PY
from tests.reliability.judge import TIMEOUT
from tests.reliability.judge import Case
from tests.reliability.judge import Result
from tests.reliability.judge import api
from tests.reliability.judge import article
from tests.reliability.judge import exact
from tests.reliability.judge import last_line
from tests.reliability.judge import module
from tests.reliability.judge import plain_run
from tests.reliability.judge import user_namespace

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


# ---------------------------------------------------------------- cases

def build_cases(corpus):
    """Every case: issue 14's items 1-16, then what was handled well."""
    return (argument_cases(corpus) + run_folder_cases(corpus) +
            model_file_cases(corpus) + disk_cases(corpus) +
            library_cases(corpus) + gather_cases(corpus) +
            data_cases(corpus) + image_cases(corpus) +
            output_cases(corpus) + hostile_cases(corpus) +
            misuse_cases(corpus))


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
    other = newest_snapshot(path('other_run'))  # once it exists
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
            last=r'^interrupted; continue with the same command and '
                 r'--resume auto$'),
    ]


def model_file_cases(corpus):
    """4, 5, 6, 8, 11, 14: model files, conversion, outputs that are
    inputs."""
    path, lenet = corpus.path, corpus.path('lenet.npz')
    digits0, upright = path('digits', '0'), path('odd', 'upright.png')
    train = trainer(corpus)
    an_input = r'that is an input of this command; choose another output ' \
        r'file$'
    cases = [
        Case('4 predict --out the model file', module(
            'predict', '--model', lenet, digits0, '-o', lenet),
            last=r'^error: --out %s: %s' % (exact(lenet), an_input)),
        Case('4 predict --out an input image', module(
            'predict', '--model', lenet, digits0, upright, '-o', upright),
            last=r'^error: --out %s: %s' % (exact(upright), an_input)),
        Case('4 export --onnx the model file', module(
            'export', '--model', lenet, '--onnx', lenet),
            last=r'^error: --out %s: %s' % (exact(lenet), an_input)),
        Case('5 convert again with a new --scale', module(
            'convert', 'lenet/lenet.caffemodel', '--prototxt',
            'lenet/lenet.prototxt', '--scale', '0.5', '--out',
            'lenet/lenet.npz'), status=0,
            setup=converted_lenet(corpus), outputs=('lenet/lenet.npz',),
            stream='stdout', last=r'^wrote lenet/lenet\.npz$',
            check=stored_scale('lenet/lenet.npz', 0.5)),
        Case('5 convert again with the same options', module(
            'convert', 'lenet/lenet.caffemodel', '--prototxt',
            'lenet/lenet.prototxt', '--out', 'lenet/lenet.npz'), status=0,
            setup=converted_lenet(corpus),
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
        broken = r'%s: not a readable model file \(' % exact(model)
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
             outputs=('.p.csv.partial',),  # kept: the rerun continues
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


def newest_snapshot(run):
    """An ``argv`` item (see :func:`~tests.reliability.judge.resolved`):
    the newest snapshot in the run folder ``run``, found when the case
    runs."""
    return lambda: latest_snapshot(run)


def converted_lenet(corpus):
    def setup(folder):
        lenet_files(os.path.join(folder, 'lenet'))
        run_quietly(corpus, folder, module(
            'convert', 'lenet/lenet.caffemodel', '--prototxt',
            'lenet/lenet.prototxt', '--out', 'lenet/lenet.npz'))
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


# ---------------------------------------------------------------- runners

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
