"""Photo folders and image bytes made for tests (noise images, coloured
textures): real files that PIL and OpenCV decode."""
import io
import os

import numpy as np
from PIL import Image


def write_style_folder(root, n_per_class=6):
    """Two 'styles' of real-looking photos under ``root`` (a pathlib.Path):
    warm/ and cool/ noise textures, 80x100 JPEGs. Returns ``root``."""
    rng = np.random.RandomState(0)
    for style, tint in (('warm', (60, 0, -60)), ('cool', (-60, 0, 60))):
        folder = root / style
        folder.mkdir(parents=True)
        for i in range(n_per_class):
            pixels = rng.randint(60, 196, (80, 100, 3)) + np.array(tint)
            Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(
                folder / ('%d.jpg' % i))
    return root


def noise_image(seed, size=(40, 30), mode='RGB'):
    """A random RGB image of ``size`` (W, H) converted to ``mode``."""
    rng = np.random.RandomState(seed)
    pixels = rng.randint(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    return Image.fromarray(pixels, 'RGB').convert(mode)


def write_image(path, seed=0, size=(40, 30), mode='RGB', **save_args):
    """Save :func:`noise_image` at ``path`` (folders made); returns it."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    noise_image(seed, size, mode).save(path, **save_args)
    return path


def make_folder(root, counts, size=(40, 30)):
    """One sub-folder of JPEGs per class ({name: count}); returns the
    expected entries [(relative path, label)], classes in sorted order."""
    entries = []
    seed = 0
    for label, (name, count) in enumerate(sorted(counts.items())):
        for k in range(count):
            relative = '%s/img%02d.jpg' % (name, k)
            write_image(os.path.join(root, relative), seed, size)
            entries.append((relative, label))
            seed += 1
    return entries


def image_bytes(seed, format, size=(64, 48)):
    """Real, distinct image bytes: random pixels encoded as JPEG or PNG."""
    pixels = np.random.RandomState(seed).randint(
        0, 256, size[::-1] + (3,), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format=format)
    return buffer.getvalue()


#: Two served images (gather tests): a JPEG and a PNG.
CAT = image_bytes(1, 'JPEG')
DOG = image_bytes(2, 'PNG')
