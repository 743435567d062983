"""Prepare a user's image folder for fine-tuning.

The steps, tied together by :func:`prepare_dataset`:

1. list the images and their labels, from a folder with one sub-folder per
   class (:func:`scan_image_folder`) or from a Caffe-style ``path label``
   file (:func:`read_image_list`);
2. open and fully decode every image once, dropping the unusable ones and
   saying why (:func:`verify_images`, :func:`write_problem_report`);
3. split into train and validation sets, class by class
   (:func:`stratified_split`);
4. write ``train.txt``, ``val.txt`` and ``labels.txt``
   (:func:`write_image_list`, :func:`write_class_names`);
5. average the training images into a mean image, one image in memory at a
   time (:func:`compute_mean_image`, :func:`save_mean`).

An *entry* is a ``(relative_path, label_index)`` tuple; paths are relative
to the data folder and use ``/`` as separator.
"""
import collections
import dataclasses
import logging
import math
import multiprocessing
import os
import sys

import numpy as np

from finetune.common.errors import DataError
from finetune.common.fileio import atomic_write
from finetune.common.fileio import printable
from finetune.common.fileio import write_csv
from finetune.data import images
from finetune.data.transforms import check_image
from finetune.data.images import is_hidden
from finetune.data.transforms import CaffePreprocess, from_array

logger = logging.getLogger(__name__)

TRAIN_FILE = 'train.txt'
VAL_FILE = 'val.txt'
CLASS_NAMES_FILE = 'labels.txt'
PROBLEMS_FILE = 'problems.csv'
MEAN_FILE = 'mean.npy'
MEAN_IMAGE_FILE = 'mean.png'


def _relative(path, root):
    return os.path.relpath(path, root).replace(os.sep, '/')


def _class_folders(root):
    """``{name: real path}`` of the class folders of ``root`` that are
    scanned: a folder that is a link to ``root``, to a folder above it or
    to a class folder met before (folders first, then links, by name) is
    left out with a warning.

    Raises:
        DataError: a class folder name that is not valid UTF-8, holds a
            line break or starts or ends with white space (it could not be
            read back from ``labels.txt`` and ``train.txt``).
    """
    top = os.path.realpath(root)
    names = sorted(name for name in os.listdir(root)
                   if not is_hidden(name)
                   and os.path.isdir(os.path.join(root, name)))
    for name in names:
        if not images.is_usable_name(name) or name != name.strip():
            raise DataError('%s: class folder name %r is not valid UTF-8, '
                            'holds a line break or starts or ends with '
                            'white space (train.txt and labels.txt could '
                            'not give it back); rename it'
                            % (printable(root), name))
    folders = {}
    for name in sorted(names, key=lambda n: (os.path.islink(
            os.path.join(root, n)), n)):
        path = os.path.join(root, name)
        real = os.path.realpath(path)
        if real in folders.values() or images.is_within(top, real):
            logger.warning('%s: links to %s (the data folder, one above it '
                           'or another class folder); not used as a class',
                           path, real)
            continue
        folders[name] = real
    return {name: folders[name] for name in sorted(folders)}


def _walk_classes(root, folders):
    """``{name: (relative image paths, [(relative path, code)])}`` of the
    class folders ``folders`` (see :func:`_class_folders`): each walked
    without entering ``root`` or another class; images whose relative
    path is not valid UTF-8 or holds a line break are not listed
    (:data:`~finetune.data.images.BAD_NAME`)."""
    walked = {}
    for name, real in folders.items():
        others = [root] + [r for n, r in folders.items() if n != name]
        found, skipped = images.walk_files(os.path.join(root, name), others)
        paths = [_relative(path, root) for path in found]
        unlisted = [(_relative(path, root), code) for path, code in skipped]
        unlisted += [(path, images.BAD_NAME) for path in paths
                     if not images.is_usable_name(path)]
        walked[name] = ([p for p in paths if images.is_usable_name(p)],
                        sorted(unlisted))
    return walked


def unlisted_files(root, class_names):
    """``(relative_path, reason)`` of the files in the class folders that
    are not read: hidden ones, those without an image extension, FIFOs and
    devices, unusable names and folders linked twice."""
    folders = {name: os.path.realpath(os.path.join(root, name))
               for name in class_names}
    return [item for _, unlisted in _walk_classes(root, folders).values()
            for item in unlisted]


def check_outputs_outside(root, outputs):
    """Refuse an output folder that is ``root`` or inside it: the next
    scan of ``root`` would read the run's own outputs (its plots) as
    images.

    Args:
        root (str): the data folder.
        outputs (dict): option (``'--out'``) -> folder.

    Raises:
        DataError: naming the option and both folders.
    """
    top = os.path.realpath(root)
    for option_name, path in outputs.items():
        if images.is_within(os.path.realpath(path), top):
            raise DataError(
                '%s %s: inside the data folder %s, whose next scan would '
                "read this run's outputs as images; choose a folder outside "
                'it' % (option_name, path, root))


def scan_image_folder(root, outputs=None):
    """List the images of a folder with one sub-folder per class.

    Class names are the sub-folder names, sorted; label ``k`` is the
    ``k``-th name. Images in nested folders belong to their top-level class
    folder. Hidden files and folders (names starting with ``.``), files
    whose extension is not in :data:`finetune.data.images.IMAGE_EXTENSIONS`,
    FIFOs and devices (never opened), names that are not valid UTF-8 or
    hold a line break, and folders reached twice through links (all listed
    by :func:`unlisted_files`), files directly in ``root`` and class
    folders without any image are ignored; a class folder that links to
    ``root``, above it or to another class is not a class (a warning).

    Args:
        root (str): the data folder.
        outputs (dict or None): option -> output folder of the run, which
            must not be inside ``root`` (:func:`check_outputs_outside`).

    Returns:
        tuple: ``(entries, class_names)``: a list of ``(relative_path,
        label)`` sorted by path, and the list of class names.

    Raises:
        DataError: ``root`` is not a folder, has fewer than 2 class
            folders with images, a class folder name cannot be a line of
            ``labels.txt``, or an output is inside ``root``.
    """
    if not os.path.isdir(root):
        raise DataError('%s: not a folder' % root)
    check_outputs_outside(root, outputs or {})
    class_names, entries = [], []
    for name, (paths, _) in _walk_classes(root, _class_folders(root)).items():
        if not paths:
            logger.warning('%s: no images, not used as a class',
                           os.path.join(root, name))
            continue
        label = len(class_names)
        class_names.append(name)
        entries.extend((path, label) for path in paths)
    _check_two_classes(root, class_names)
    return sorted(entries), class_names


def _check_two_classes(root, class_names):
    if len(class_names) < 2:
        raise DataError(
            '%s: found %d class folder(s) with images (%s); need at least 2, '
            'one sub-folder of images per class'
            % (root, len(class_names), ', '.join(class_names) or 'none'))


def read_class_names(path):
    """Class names from a ``labels.txt`` file, one per line, blanks skipped.

    Raises:
        DataError: the file cannot be read, or a name holds a line break
            other than ``\\n`` (``\\u2028``, ``\\x0c``, ...: it could not be
            written back as one line).
    """
    try:
        with open(path, encoding='utf-8') as f:  # \r\n and \r are \n
            lines = f.read().split('\n')
    except (OSError, UnicodeDecodeError) as e:
        raise DataError('%s: cannot read class names: %s' % (path, e)) \
            from None
    names = []
    for number, line in enumerate(lines, 1):
        name = line.strip()
        if name and not images.is_usable_name(name):
            raise DataError('%s:%d: class name %r holds a line break'
                            % (path, number, name))
        if name:
            names.append(name)
    return names


def read_image_list(path, root, allow_empty=False):
    """Read a Caffe-style image list: one ``relative/path.jpg label`` a line.

    The label is a non-negative integer after the last run of whitespace,
    so paths may contain spaces. Blank lines are skipped. Class names come
    from a ``labels.txt`` beside ``path`` when there is one (the file
    :func:`write_class_names` writes), else they are ``'0'``, ``'1'``, ...

    Args:
        path (str): the label file.
        root (str): the folder the image paths are relative to; only used
            to check that it exists (images are checked by
            :func:`verify_images`).
        allow_empty (bool): an empty file is an empty list (a run's
            ``val.txt`` without validation images), not an error.

    Returns:
        tuple: ``(entries, class_names)`` as :func:`scan_image_folder`.

    Raises:
        DataError: the file cannot be read, a line is malformed (the message
            names the file and line number), there are no entries, or
            ``labels.txt`` names fewer classes than the labels need.
    """
    if not os.path.isdir(root):
        raise DataError('%s: not a folder' % root)
    entries = []
    try:
        with open(path, encoding='utf-8') as f:
            lines = f.read().splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise DataError('%s: cannot read label file: %s' % (path, e)) \
            from None
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        fields = line.rsplit(None, 1)
        try:
            if len(fields) != 2:
                raise ValueError
            label = int(fields[1])
            if label < 0:
                raise ValueError
        except ValueError:
            raise DataError(
                '%s:%d: expected "image_path label" with a non-negative '
                'integer label, got %r' % (path, number, line)) from None
        entries.append((fields[0].strip(), label))
    if not entries:
        if allow_empty:
            return [], []
        raise DataError('%s: no "image_path label" lines' % path)
    n_classes = max(label for _, label in entries) + 1
    names_path = os.path.join(os.path.dirname(os.path.abspath(path)),
                              CLASS_NAMES_FILE)
    if os.path.isfile(names_path) and \
            os.path.abspath(names_path) != os.path.abspath(path):
        class_names = read_class_names(names_path)
        if len(class_names) < n_classes:
            raise DataError(
                '%s: names %d classes but %s uses labels up to %d'
                % (names_path, len(class_names), path, n_classes - 1))
    else:
        class_names = [str(k) for k in range(n_classes)]
    return entries, class_names


def write_image_list(path, entries):
    """Write entries as ``path label`` lines (atomically), in the given order.

    Raises:
        DataError: a path contains a line break and cannot be written.
    """
    lines = []
    for image_path, label in entries:
        if not images.is_usable_name(image_path):
            raise DataError('%r: image path is not valid UTF-8 or contains '
                            'a line break' % image_path)
        lines.append('%s %d\n' % (image_path, int(label)))
    with atomic_write(path) as tmp:
        with open(tmp, 'w', encoding='utf-8') as f:
            f.writelines(lines)


def write_class_names(path, names):
    """Write class names one per line (``labels.txt``), atomically."""
    with atomic_write(path) as tmp:
        with open(tmp, 'w', encoding='utf-8') as f:
            f.writelines('%s\n' % name for name in names)


def _round_half_up(value):
    return int(math.floor(value + 0.5))


def stratified_split(entries, val_fraction, seed=0):
    """Split entries into train and validation sets, class by class.

    Each class with ``n`` images gives ``round(n * val_fraction)`` of them
    (rounding halves up) to validation, but keeps at least one in training
    when ``n >= 2``; a class with one image stays in training. The result
    depends only on the set of entries and ``seed``, not on their order:
    entries are sorted first, and each class is shuffled by its own
    generator seeded with ``(seed, label)``.

    Args:
        entries (list): ``(path, label)`` tuples.
        val_fraction (float): in ``[0, 1)``; 0 gives an empty validation set.
        seed (int): non-negative seed of the shuffle.

    Returns:
        tuple: ``(train, val)``, each a list of entries sorted by path.
    """
    if not 0 <= val_fraction < 1:
        raise ValueError('val_fraction must be in [0, 1), got %r'
                         % (val_fraction,))
    by_class = collections.defaultdict(list)
    for path, label in sorted((str(p), int(l)) for p, l in entries):
        by_class[label].append((path, label))
    train, val = [], []
    for label in sorted(by_class):
        members = by_class[label]
        n_val = _round_half_up(len(members) * val_fraction)
        n_val = min(n_val, len(members) - 1) if len(members) >= 2 else 0
        order = np.random.RandomState([seed, label]).permutation(len(members))
        val.extend(members[k] for k in order[:n_val])
        train.extend(members[k] for k in order[n_val:])
    return sorted(train), sorted(val)


def _check_image_task(args):
    path, channels = args
    return check_image(path, channels)


def verify_images(root, entries, jobs=1, channels=3):
    """Open every image once, fully, and drop the unusable ones.

    Args:
        root (str): the folder the entry paths are relative to.
        entries (list): ``(relative_path, label)`` tuples.
        jobs (int): worker processes; 1 checks in this process, ``None``
            or 0 uses one per CPU.
        channels (int): 3 or 1, as the network input.

    Returns:
        tuple: ``(good_entries, problems)``: the usable entries in their
        input order, and ``(relative_path, reason)`` tuples for the others
        (problem codes of :data:`finetune.data.images.PROBLEMS`).
    """
    entries = list(entries)
    tasks = [(os.path.join(root, path), channels) for path, _ in entries]
    jobs = jobs or os.cpu_count() or 1
    if jobs > 1 and len(tasks) > 1:
        # forkserver: forking a process that may run threads (the loader's
        # prefetch, BLAS) can deadlock, and Python 3.12+ warns about it
        context = multiprocessing.get_context('forkserver')
        with context.Pool(min(jobs, len(tasks))) as pool:
            reasons = pool.map(_check_image_task, tasks,
                               chunksize=max(1, min(64, len(tasks) //
                                                    (4 * jobs))))
    else:
        reasons = [_check_image_task(task) for task in tasks]
    good, problems = [], []
    for entry, reason in zip(entries, reasons):
        if reason is None:
            good.append(entry)
        else:
            problems.append((entry[0], reason))
    return good, problems


def write_problem_report(path, problems):
    """Write ``(path, reason)`` pairs as a CSV file with a ``path,reason``
    header (just the header when there are none), atomically."""
    write_csv(path, ('path', 'reason'), problems)


def compute_mean_image(root, entries, preprocess_size=(256, 256), channels=3):
    """Average the images, resized to ``preprocess_size``, in one pass.

    Each image is decoded and resized as
    :meth:`finetune.data.transforms.CaffePreprocess.image_array` does without
    mean or crop, and added to a float64 running sum: memory
    stays at one image and one sum whatever the number of images.

    Args:
        root (str): the folder the entry paths are relative to.
        entries (list): ``(relative_path, label)`` tuples.
        preprocess_size (tuple): (H, W) in pixels.
        channels (int): 3 (BGR) or 1 (gray).

    Returns:
        numpy.ndarray: float32 (channels, H, W), 0-255, BGR for 3 channels.

    Raises:
        DataError: no entries, or an image cannot be read.
    """
    if not entries:
        raise DataError('%s: no images to average' % root)
    preprocess = CaffePreprocess(size=preprocess_size, crop_size=None,
                                 mean=None, channels=channels)
    total = np.zeros((channels,) + tuple(preprocess_size), np.float64)
    for path, _ in entries:
        total += preprocess.image_array(os.path.join(root, path))
    return (total / len(entries)).astype(np.float32)


def save_mean(mean, directory):
    """Write ``mean.npy`` (the float32 array) and ``mean.png`` (for viewing).

    Args:
        mean (numpy.ndarray): (C, H, W), 0-255, BGR or gray.
        directory (str): created if missing.

    Returns:
        tuple: the paths of ``mean.npy`` and ``mean.png``.
    """
    mean = np.asarray(mean, dtype=np.float32)
    npy_path = os.path.join(directory, MEAN_FILE)
    png_path = os.path.join(directory, MEAN_IMAGE_FILE)
    with atomic_write(npy_path, suffix='.npy') as tmp:
        np.save(tmp, mean)
    with atomic_write(png_path, suffix='.png') as tmp:
        from_array(mean).save(tmp, format='PNG')
    return npy_path, png_path


def load_mean(path):
    """Read a mean saved by :func:`save_mean`: float32 (C, H, W) or (C,).

    Raises:
        DataError: the file cannot be read or is not a 1-D or 3-D array.
    """
    try:
        mean = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise DataError('%s: cannot read mean: %s' % (path, e)) from None
    if mean.ndim not in (1, 3):
        raise DataError('%s: mean has shape %s; expected (C, H, W) or (C,)'
                        % (path, mean.shape))
    return mean.astype(np.float32)


def drop_unreadable_classes(root, entries, class_names):
    """Leave out the classes none of whose images ``entries`` holds (all
    their files were unusable), as an empty class folder is, with a
    warning each; labels are renumbered in name order.

    Returns:
        tuple: ``(entries, class_names)``.

    Raises:
        DataError: fewer than 2 classes are left.
    """
    present = sorted({label for _, label in entries})
    for label in sorted(set(range(len(class_names))) - set(present)):
        logger.warning('%s: no readable images, not used as a class',
                       os.path.join(root, class_names[label]))
    renumber = {old: new for new, old in enumerate(present)}
    kept = [class_names[label] for label in present]
    _check_two_classes(root, kept)
    return [(path, renumber[label]) for path, label in entries], kept


@dataclasses.dataclass(frozen=True)
class PreparedDataset:
    """What :func:`prepare_dataset` produced.

    Attributes:
        train (list): training entries ``(relative_path, label)``.
        val (list): validation entries.
        class_names (list): ``class_names[label]`` names the class.
        mean (numpy.ndarray or None): float32 (C, H, W) mean of the
            training images, 0-255 BGR; ``None`` when not computed.
        problems (list): ``(relative_path, reason)`` of skipped files.
    """
    train: list
    val: list
    class_names: list
    mean: object
    problems: list


def list_dataset(data_dir, image_list=None, outputs=None):
    """``(entries, class_names)`` of ``image_list`` (see
    :func:`read_image_list`), or of the class folders of ``data_dir`` (see
    :func:`scan_image_folder`); reads no image.

    Args:
        outputs (dict or None): option (``'--out'``) -> output folder of
            the run: the label file must not be inside one (the run
            rewrites its lists there), nor one inside the class folders.

    Raises:
        DataError: the label file or folder cannot be used.
    """
    if image_list is not None:
        real = os.path.realpath(image_list)
        for option_name, path in (outputs or {}).items():
            if images.is_within(real, os.path.realpath(path)):
                raise DataError(
                    '--image-list %s: inside %s %s, which the run rewrites '
                    '(train.txt, val.txt, labels.txt); copy it elsewhere'
                    % (image_list, option_name, path))
        return read_image_list(image_list, data_dir)
    return scan_image_folder(data_dir, outputs)


def prepare_dataset(data_dir, out_dir, val_split=0.1, seed=0,
                    image_list=None, compute_mean=True, channels=3,
                    size=(256, 256), jobs=1):
    """List, verify and split a data folder; write the lists and mean.

    Writes into ``out_dir``: ``train.txt`` and ``val.txt`` (``path label``
    lines, paths relative to ``data_dir``), ``labels.txt`` (class names),
    ``problems.csv`` (skipped files and why; always written) and, when
    ``compute_mean``, ``mean.npy`` and ``mean.png`` from the training split
    only. Prints one summary line to stderr.

    Args:
        data_dir (str): the image folder (one sub-folder per class unless
            ``image_list`` is given).
        out_dir (str): created if missing; refused inside ``data_dir``
            (the next scan would read it), and an ``image_list`` inside it.
        val_split (float): fraction of each class for validation, in [0, 1).
        seed (int): seed of the split.
        image_list (str or None): a ``path label`` file listing the images
            instead of the class folders.
        compute_mean (bool): compute and save the mean image.
        channels (int): 3 (BGR) or 1 (gray).
        size (tuple): (H, W) images are resized to, for the mean.
        jobs (int): processes verifying images (see :func:`verify_images`).

    Returns:
        PreparedDataset

    Raises:
        DataError: the folder or label file cannot be used, or no image
            can be read.
    """
    entries, class_names = list_dataset(data_dir, image_list,
                                        {'--out': out_dir})
    good, problems = verify_images(data_dir, entries, jobs=jobs,
                                   channels=channels)
    if image_list is None:
        problems += unlisted_files(data_dir, class_names)
        if good:
            good, class_names = drop_unreadable_classes(data_dir, good,
                                                        class_names)
    else:  # the file numbers the classes: they stay, said once each
        for label in sorted(set(range(len(class_names))) -
                            {label for _, label in good}):
            logger.warning('%s: class %d (%s) has no readable image; it is '
                           'not trained', image_list, label,
                           class_names[label])
    os.makedirs(out_dir, exist_ok=True)
    problems_path = os.path.join(out_dir, PROBLEMS_FILE)
    write_problem_report(problems_path, problems)
    if not good:
        raise DataError('%s: none of the %d images can be read; see %s'
                        % (data_dir, len(entries), problems_path))
    train, val = stratified_split(good, val_split, seed)
    write_image_list(os.path.join(out_dir, TRAIN_FILE), train)
    write_image_list(os.path.join(out_dir, VAL_FILE), val)
    write_class_names(os.path.join(out_dir, CLASS_NAMES_FILE), class_names)
    mean = None
    if compute_mean:
        mean = compute_mean_image(data_dir, train, size, channels)
        save_mean(mean, out_dir)
    summary = '%d train and %d validation images in %d classes' % (
        len(train), len(val), len(class_names))
    if problems:
        summary += ('; skipped %d file(s) (unreadable, hidden or not '
                    'images), listed in %s' % (len(problems), problems_path))
    print(summary, file=sys.stderr)
    return PreparedDataset(train, val, class_names, mean, problems)
