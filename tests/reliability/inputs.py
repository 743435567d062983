"""The reliability corpus's inputs: what :func:`build_inputs` writes once
for every case (digit class folders, the real Caffe LeNet converted, odd
and broken images and model files, URL lists routed on a local server)."""
import gzip
import io
import os
import shutil
import subprocess
import tempfile

import numpy as np
from PIL import Image

from finetune.demo import LENET_DIR
from finetune.demo import convert_lenet
from finetune.demo import write_digit_folders
from tests.support.http_server import Response
from tests.reliability.judge import TIMEOUT
from tests.reliability.judge import module

ASSETS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(
    __file__))), 'assets')
JPEG = 'image/jpeg'

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


def run_quietly(corpus, folder, argv):
    """A set-up command in ``folder``; raises if it fails."""
    result = subprocess.run(argv, cwd=folder, env=corpus.env(folder),
                            capture_output=True, text=True, timeout=TIMEOUT)
    if result.returncode != 0:
        raise RuntimeError('set-up %s failed: %s'
                           % (' '.join(argv[1:4]), result.stderr[-2000:]))


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
