#!/usr/bin/env python
"""Where the flowers demo's time goes: scan, feature cache, head training.

    .venv/bin/python benchmarks/bench_demo.py [--threads 2]     # ~2 min

Runs the demo's fine-tuned run (python -m finetune.demo: open_nsfw, trunk
``up-to:pool`` frozen and cached, 5 crops per training photo, new fc_nsfw,
20 epochs on examples/flowers/photos) twice into one fresh --out: first
with an empty feature cache, then again with ``--overwrite`` (a new run
whose cache is still valid, so it is reused). Prints the wall-clock seconds
of each stage (``FitResult.seconds``) and each stage's share of the run.
"""
import argparse
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common as C  # noqa: E402

#: FitResult.seconds' stages, in the order they run
STAGES = ('scan', 'features', 'training', 'evaluation')


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--threads', type=int, default=2)
    args = parser.parse_args(argv)
    removed = C.setup_threads(args.threads)
    C.emit(C.environment_report(args.threads, removed))
    from finetune.demo import finetuned_options
    from finetune.demo import flowers_config
    from finetune.training.fit import fit
    rows = []
    with tempfile.TemporaryDirectory() as work:
        os.environ.setdefault('FINETUNE_CACHE', os.path.join(work, 'cache'))
        for name in ('cold cache', 'cache reused'):
            start = time.perf_counter()
            result = fit(flowers_config(os.path.join(work, 'run'),
                                        **finetuned_options()))
            total = time.perf_counter() - start
            seconds = result.seconds
            rows.append([name] + [seconds[k] for k in STAGES] + [total] + [
                100 * seconds[k] / total for k in STAGES] + [
                result.metrics['top1_accuracy']])
    C.emit(C.table(['run'] + list(STAGES) + ['total s'] +
                   ['%% %s' % k for k in STAGES] + ['val acc'], rows,
                   title='\nthe demo\'s fine-tuned run, seconds by stage '
                   '(total includes loading the net and saving)'))


if __name__ == '__main__':
    main()
