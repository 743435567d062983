"""Pick the demo's flower photos, and a held-out set for accuracy studies.

    python scripts/pick_flowers_subset.py examples/flowers/photos \
        [--held-out /tmp/flowers-held-out] [--source ../shared/datasets/flowers]

Left out: photos whose bytes occur in more than one class (the set's
known label noise) and the files named ``aug_*`` (128x128, in every class
but dandelion: by their names augmented copies, which could put variants
of one photo on both sides of the split, and whose size alone hints at the
class); the rest of each class is shuffled with
``random.Random(13)``; the first ``--per-class`` (60) are copied unchanged
into the subset and the next ``--held-out-per-class`` (200) are linked into
the held-out folder, so the two never share a photo. This is how
examples/flowers/photos was made.
"""
import argparse
import hashlib
import os
import random
import shutil


def classes_of(source):
    """Class folder names of ``source``, sorted."""
    return sorted(d for d in os.listdir(source)
                  if os.path.isdir(os.path.join(source, d)))


def files_in_several_classes(source, classes):
    """Set of (class, file name) whose bytes also occur in another class."""
    by_digest = {}
    for name in classes:
        for f in os.listdir(os.path.join(source, name)):
            with open(os.path.join(source, name, f), 'rb') as stream:
                digest = hashlib.sha1(stream.read()).hexdigest()
            by_digest.setdefault(digest, set()).add((name, f))
    return {item for items in by_digest.values()
            if len({c for c, _ in items}) > 1 for item in items}


def pick(source, subset, held_out, per_class, held_out_per_class, seed=13):
    """Copy the subset and link the held-out photos (see module doc)."""
    classes = classes_of(source)
    noisy = files_in_several_classes(source, classes)
    rng = random.Random(seed)
    for name in classes:
        files = sorted(f for f in os.listdir(os.path.join(source, name))
                       if (name, f) not in noisy
                       and not f.startswith('aug_'))
        rng.shuffle(files)
        os.makedirs(os.path.join(subset, name))
        for f in files[:per_class]:
            shutil.copy2(os.path.join(source, name, f),
                         os.path.join(subset, name, f))
        if held_out:
            os.makedirs(os.path.join(held_out, name))
            for f in files[per_class:per_class + held_out_per_class]:
                os.symlink(os.path.abspath(os.path.join(source, name, f)),
                           os.path.join(held_out, name, f))
    print('%d classes; %d photos left out as label noise'
          % (len(classes), len(noisy)))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('subset', help='new folder for the copied photos')
    parser.add_argument('--held-out', help='new folder of links to other '
                        'photos of the set, for accuracy studies')
    parser.add_argument('--source', default=os.path.join(
        '..', 'shared', 'datasets', 'flowers'))
    parser.add_argument('--per-class', type=int, default=60)
    parser.add_argument('--held-out-per-class', type=int, default=200)
    args = parser.parse_args()
    pick(args.source, args.subset, args.held_out, args.per_class,
         args.held_out_per_class)


if __name__ == '__main__':
    main()
