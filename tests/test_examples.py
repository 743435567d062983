"""The examples run: AlexNet Flickr-Style fine-tuning and the inference
script, with a random-weights BVLC AlexNet standing in for the real one."""
import os
import subprocess
import sys

import numpy as np
from PIL import Image

EXAMPLES = os.path.join(os.path.dirname(__file__), '..', 'examples')


def write_style_folder(root, n_per_class=6):
    """Two 'styles' of real-looking photos: warm and cool noise textures."""
    rng = np.random.RandomState(0)
    for style, tint in (('warm', (60, 0, -60)), ('cool', (-60, 0, 60))):
        folder = root / style
        folder.mkdir(parents=True)
        for i in range(n_per_class):
            pixels = rng.randint(60, 196, (80, 100, 3)) + np.array(tint)
            Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(
                folder / ('%d.jpg' % i))
    return root


def test_flickr_style_example_then_classify(tmp_path):
    data = write_style_folder(tmp_path / 'photos')
    pretrained = tmp_path / 'pretrained' / 'bvlc_alexnet.caffemodel'
    out = tmp_path / 'result'
    result = subprocess.run(
        [sys.executable, os.path.join(EXAMPLES, 'finetune_flickr_style.py'),
         '--data', str(data), '--out', str(out), '--pretrained',
         str(pretrained), '--random-weights', '--epochs', '1',
         '--batchsize', '4', '--loaderjob', '1'],
        capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-2000:]
    assert 'writing random weights' in result.stderr
    assert (out / 'model_final.npz').exists()
    assert pretrained.with_suffix('.npz').exists()  # converted once
    images = sorted(str(p) for p in (data / 'warm').iterdir())[:2]
    classify = subprocess.run(
        [sys.executable, os.path.join(EXAMPLES, 'classify.py'),
         str(out / 'model_final.npz')] + images,
        capture_output=True, text=True, timeout=300)
    assert classify.returncode == 0, classify.stderr
    lines = classify.stdout.strip().splitlines()
    assert len(lines) == 2
    for line, image in zip(lines, images):
        path, label, prob = line.split('\t')
        assert path == image and label in ('warm', 'cool')
        assert 0.5 <= float(prob) <= 1.0
