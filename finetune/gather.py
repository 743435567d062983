"""Download a list of image URLs into class folders.

    python -m finetune.gather urls.txt -o photos/
    python -m finetune.gather flickr_style.csv.gz -o photos/ \\
        --url-column image_url --label-column label --class-names style_names.txt

Only real, distinct images are kept; every entry's fate is a row of the
report. A killed run (SIGKILL included) resumes when the same command is
run again: it leaves its images and the journal ``.gather_report.csv.partial``
beside the report, which the next run reads, appends to and removes when it
completes. The library call is
:func:`finetune.sources.url_images.gather_from_list`.
"""
import argparse
import re
import sys

from finetune.common.cli import add_class_names_argument
from finetune.common.cli import command
from finetune.common.cli import non_negative_int
from finetune.common.cli import positive_float
from finetune.common.cli import positive_int
from finetune.sources.url_images import DEFAULT_MAX_BYTES
from finetune.sources.url_images import REPORT_NAME
from finetune.sources.url_images import gather_from_list


def byte_count(text):
    """argparse type: bytes, with an optional K, M or G suffix (powers of 1024)."""
    match = re.fullmatch(r'(\d+)([KMG]?)B?', text.strip().upper())
    if not match or int(match.group(1)) < 1:
        raise argparse.ArgumentTypeError(
            f'expected a byte count >= 1 like 20M, got {text!r}')
    return int(match.group(1)) << {'': 0, 'K': 10, 'M': 20, 'G': 30}[match.group(2)]


def build_parser():
    """The command-line interface of ``python -m finetune.gather``."""
    parser = argparse.ArgumentParser(
        prog='python -m finetune.gather',
        description='Download a list of image URLs into class folders, keeping only real, '
                    'distinct images and reporting why each other one was skipped.')
    parser.add_argument('list', help='"url label" lines, or a CSV (.gz read transparently)')
    parser.add_argument('-o', '--out', required=True, help='root of the class folders')
    parser.add_argument('--report', help=f'report CSV (default: <out>/{REPORT_NAME})')
    columns = parser.add_argument_group('list format')
    columns.add_argument('--url-column', help='CSV column of URLs (default: image_url or url)')
    columns.add_argument('--label-column', help='CSV column of labels (default: label)')
    add_class_names_argument(columns)
    transfer = parser.add_argument_group('transfer')
    transfer.add_argument('--jobs', type=positive_int, default=8,
                          help='parallel downloads (default: 8)')
    transfer.add_argument('--timeout', type=positive_float, default=10.0,
                          help='seconds to connect and for each read (default: 10)')
    transfer.add_argument('--retries', type=non_negative_int, default=2,
                          help='retries after timeouts, connection errors, 5xx (default: 2)')
    transfer.add_argument('--deadline', type=positive_float,
                          help='seconds one image may take, retries included '
                          '(default: 3 x --timeout); slower hosts are skipped')
    transfer.add_argument('--max-bytes', type=byte_count, default=DEFAULT_MAX_BYTES,
                          help='cap on bytes read per image, e.g. 20M (default: 20M)')
    transfer.add_argument('--no-progress', action='store_true', help='do not draw a progress bar')
    keep = parser.add_argument_group('which images are kept')
    keep.add_argument('--min-size', type=non_negative_int, default=32,
                      help='smallest width and height kept, in pixels (default: 32)')
    keep.add_argument('--placeholder-hashes', action='append', default=[], metavar='FILE',
                      help='file of sha1s of placeholder images to skip (repeatable)')
    keep.add_argument('--placeholder-image', action='append', default=[], metavar='FILE',
                      help='an example placeholder image to skip (repeatable)')
    return parser


@command
def main(argv=None):
    """Run the CLI; return 0, or exit with status 2 and a one-line error on stderr."""
    args = build_parser().parse_args(argv)
    print(gather_from_list(
        args.list, args.out, args.url_column, args.label_column,
        args.class_names, args.placeholder_hashes, args.placeholder_image,
        args.report, jobs=args.jobs, timeout=args.timeout,
        retries=args.retries, max_bytes=args.max_bytes,
        min_size=args.min_size, progress=not args.no_progress,
        deadline=args.deadline))
    return 0


if __name__ == '__main__':
    sys.exit(main())
