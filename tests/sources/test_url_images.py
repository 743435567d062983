"""finetune.gather against a local HTTP server on 127.0.0.1 (issue 7)."""
import csv
import gzip
import hashlib
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

from finetune import gather as gather_module
from finetune.common.errors import DataError
from finetune.data.folder import read_class_names
from finetune.sources.url_images import Entry, gather, read_entries, read_placeholder_hashes

from tests.support.http_server import Response
from tests.support.photos import CAT
from tests.support.photos import DOG
from tests.support.photos import image_bytes

from tests.support.paths import ASSETS
from tests.support.paths import data_path

DATA = ASSETS
FAST = {'timeout': 0.3, 'retries': 1, 'backoff': 0.01, 'jobs': 4, 'progress': False}


def stored_name(data, extension):
    return hashlib.sha1(data).hexdigest()[:16] + extension


def files_under(root):
    """Every file below ``root`` as a sorted list of '/'-joined relative paths."""
    return sorted(os.path.relpath(os.path.join(folder, name), root).replace(os.sep, '/')
                  for folder, _, names in os.walk(root) for name in names)


def report_reasons(path):
    with open(path, newline='') as file:
        rows = list(csv.DictReader(file))
    assert list(rows[0]) == ['url', 'label', 'status', 'reason', 'path']
    return {row['url']: (row['status'], row['reason'], row['path']) for row in rows}


DOG2 = image_bytes(3, 'JPEG')
FLAKY = image_bytes(4, 'JPEG')
PLACEHOLDER = image_bytes(5, 'PNG', size=(40, 30))
TINY = image_bytes(6, 'PNG', size=(8, 8))
BIG = image_bytes(7, 'PNG', size=(300, 300))
TRUNCATED = image_bytes(8, 'JPEG')[:1500]


# (path on the server, label, expected status, expected reason), in input order.
CASES = [
    ('/cat.jpg', 'cat', 'saved', ''),
    ('/dog.png', 'dog', 'saved', ''),
    ('/dog2', 'dog', 'saved', ''),  # served as application/octet-stream
    ('/missing.jpg', 'cat', 'skipped', 'http-404'),
    ('/flaky.jpg', 'cat', 'saved', ''),  # 500, then the image
    ('/always500.jpg', 'cat', 'skipped', 'http-503'),
    ('/slow.jpg', 'cat', 'skipped', 'timeout'),
    ('/page.html', 'dog', 'skipped', 'not-image'),
    ('/html-as-jpeg.jpg', 'dog', 'skipped', 'not-image'),
    ('/truncated.jpg', 'dog', 'skipped', 'truncated-image'),
    ('/cut-connection.jpg', 'dog', 'skipped', 'truncated'),
    ('/placeholder.png', 'cat', 'skipped', 'placeholder'),
    ('/copy-of-cat.jpg', 'dog', 'skipped', 'duplicate'),  # same bytes, other label
    ('/cat.jpg', 'cat', 'skipped', 'duplicate'),  # same URL twice
    ('/tiny.png', 'cat', 'skipped', 'too-small'),
    ('/big.png', 'cat', 'skipped', 'too-large'),
    ('/dog.png', '../escape', 'skipped', 'bad-label'),
    ('/dog.png', '/etc', 'skipped', 'bad-label'),
    ('/dog.png', '.hidden', 'skipped', 'bad-label'),
    ('/dog.png', '', 'skipped', 'bad-label'),
]
EXPECTED_FILES = sorted([
    'cat/' + stored_name(CAT, '.jpg'), 'dog/' + stored_name(DOG, '.png'),
    'dog/' + stored_name(DOG2, '.jpg'), 'cat/' + stored_name(FLAKY, '.jpg'),
    'gather_report.csv'])


def serve_issue_cases(server):
    """Route every case issue 7 lists."""
    jpeg, png = 'image/jpeg', 'image/png'
    server.route('/cat.jpg', Response(CAT, content_type=jpeg))
    server.route('/dog.png', Response(DOG, content_type=png))
    server.route('/dog2', Response(DOG2))
    server.route('/flaky.jpg', Response(b'oops', 500, 'text/plain'), Response(FLAKY, content_type=jpeg))
    server.route('/always500.jpg', Response(b'down', 503, 'text/plain'))
    server.route('/slow.jpg', Response(CAT, content_type=jpeg, delay=2.0))
    server.route('/page.html', Response(b'<html>photo gone</html>', content_type='text/html'))
    server.route('/html-as-jpeg.jpg', Response(b'<html>nope</html>', content_type=jpeg))
    server.route('/truncated.jpg', Response(TRUNCATED, content_type=jpeg))
    server.route('/cut-connection.jpg', Response(DOG2, content_type=jpeg, truncate_at=500))
    server.route('/placeholder.png', Response(PLACEHOLDER, content_type=png))
    server.route('/copy-of-cat.jpg', Response(CAT, content_type=jpeg))
    server.route('/tiny.png', Response(TINY, content_type=png))
    server.route('/big.png', Response(BIG, content_type=png))


def run_issue_cases(server, out, **options):
    serve_issue_cases(server)
    entries = [Entry(server.url(path), label) for path, label, _, _ in CASES]
    options = {**FAST, 'max_bytes': 20_000, 'min_size': 16,
               'placeholder_hashes': {hashlib.sha1(PLACEHOLDER).hexdigest()}, **options}
    return entries, gather(entries, str(out), **options)


def test_issue_cases_write_exactly_the_good_images(tmp_path, server):
    assert len(BIG) > 20_000 > max(len(CAT), len(DOG), len(DOG2), len(FLAKY), len(PLACEHOLDER))
    out = tmp_path / 'photos'
    entries, rows = run_issue_cases(server, out)

    assert files_under(out) == EXPECTED_FILES
    assert os.listdir(tmp_path) == ['photos']  # nothing written outside --out
    assert [row.url for row in rows] == [entry.url for entry in entries]
    got = [(row.url[len(server.url('')):], row.label, row.status, row.reason) for row in rows]
    assert got == CASES
    assert rows[12].path == rows[13].path == rows[0].path == 'cat/' + stored_name(CAT, '.jpg')

    report = report_reasons(out / 'gather_report.csv')
    assert report[server.url('/truncated.jpg')] == ('skipped', 'truncated-image', '')
    assert report[server.url('/dog.png')][1] == 'bad-label'  # the last row for that URL wins
    assert len(server.requests_for('/flaky.jpg')) == 2
    assert len(server.requests_for('/missing.jpg')) == 1  # 4xx is not retried
    assert len(server.requests_for('/always500.jpg')) == 2


def test_second_run_skips_what_is_on_disk(tmp_path, server):
    out = tmp_path / 'photos'
    run_issue_cases(server, out)
    stale = out / 'cat' / ('.' + stored_name(FLAKY, '.jpg') + '.k1ll3d.tmp')
    stale.write_bytes(b'half an image from a killed run')
    before = len(server.requests_for('/cat.jpg'))

    _, rows = run_issue_cases(server, out)
    assert files_under(out) == EXPECTED_FILES  # the stale temporary file is gone
    present = [row.url[len(server.url('')):] for row in rows if row.status == 'present']
    assert present == ['/cat.jpg', '/dog.png', '/dog2', '/flaky.jpg']
    assert [(row.status, row.reason) for row in rows[12:14]] == [('skipped', 'duplicate')] * 2
    assert len(server.requests_for('/cat.jpg')) == before  # not downloaded again
    assert len(server.requests_for('/dog2')) == 1


def test_rerun_without_report_finds_files_by_content(tmp_path, server):
    out = tmp_path / 'photos'
    run_issue_cases(server, out)
    os.remove(out / 'gather_report.csv')
    cat_file = out / 'cat' / stored_name(CAT, '.jpg')
    cat_file.write_bytes(CAT[:100])  # damaged on disk: must be replaced
    _, rows = run_issue_cases(server, out)
    assert files_under(out) == EXPECTED_FILES
    assert cat_file.read_bytes() == CAT
    assert rows[0].status == 'saved' and rows[1].status == 'present'


def test_killed_run_leaves_journal_that_next_run_uses(tmp_path, server):
    server.route('/cat.jpg', Response(CAT, content_type='image/jpeg'))
    out = tmp_path / 'photos'
    gather([Entry(server.url('/cat.jpg'), 'cat')], str(out), **FAST)
    # Simulate a run killed after writing its journal but before renaming it.
    os.replace(out / 'gather_report.csv', out / '.gather_report.csv.partial')
    rows = gather([Entry(server.url('/cat.jpg'), 'cat')], str(out), **FAST)
    assert rows[0].status == 'present'
    assert len(server.requests) == 1
    assert files_under(out) == ['cat/' + stored_name(CAT, '.jpg'), 'gather_report.csv']


def start_gather(listing, out):
    """``python -m finetune.gather LISTING -o OUT`` in its own session."""
    return subprocess.Popen(
        [sys.executable, '-m', 'finetune.gather', str(listing), '-o', str(out),
         '--timeout', '30', '--retries', '0', '--no-progress'],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)


def wait_until(condition, timeout=60):
    deadline = time.time() + timeout
    while not condition():
        assert time.time() < deadline, 'gave up waiting'
        time.sleep(0.02)


def kill(proc):
    os.killpg(proc.pid, signal.SIGKILL)
    proc.communicate()


def test_sigkilled_runs_resume_and_leave_no_journal(tmp_path, server):
    jpeg = 'image/jpeg'
    hang = Response(CAT, content_type=jpeg, delay=120)
    server.route('/host-down.jpg', Response(b'down', 503, 'text/plain'), hang,
                 Response(FLAKY, content_type=jpeg))
    server.route('/cat.jpg', Response(CAT, content_type=jpeg))
    server.route('/dog.png', Response(DOG, content_type='image/png'))
    server.route('/late.jpg', hang, Response(DOG2, content_type=jpeg))
    listing = tmp_path / 'urls.txt'
    listing.write_text(''.join(server.url(path) + ' ' + label + '\n' for path, label in [
        ('/host-down.jpg', 'cat'), ('/cat.jpg', 'cat'), ('/dog.png', 'dog'),
        ('/late.jpg', 'dog')]))
    out = tmp_path / 'photos'
    journal = out / '.gather_report.csv.partial'
    # 1st run: host-down fails, cat and dog are saved, killed waiting for late
    proc = start_gather(listing, out)
    wait_until(lambda: journal.exists() and server.url('/dog.png') in journal.read_text())
    wait_until(lambda: server.requests_for('/late.jpg'))
    kill(proc)
    saved = ['cat/' + stored_name(CAT, '.jpg'), 'dog/' + stored_name(DOG, '.png')]
    assert files_under(out) == sorted(saved + [journal.name])
    # 2nd run: retries host-down, which now hangs before cat and dog's rows
    proc = start_gather(listing, out)
    wait_until(lambda: len(server.requests_for('/host-down.jpg')) == 2
               and len(server.requests_for('/late.jpg')) == 2)
    kill(proc)
    assert files_under(out) == sorted(saved + [journal.name])
    # 3rd run completes: cat and dog are still known, not downloaded again
    proc = start_gather(listing, out)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 0, stderr
    assert 'gather: 2 saved, 2 already present, 0 skipped' in stdout
    assert len(server.requests_for('/cat.jpg')) == len(server.requests_for('/dog.png')) == 1
    assert files_under(out) == sorted(saved + [
        'cat/' + stored_name(FLAKY, '.jpg'), 'dog/' + stored_name(DOG2, '.jpg'),
        'gather_report.csv'])  # no journal, no temporary file
    report = report_reasons(out / 'gather_report.csv')
    assert [status for status, _, _ in report.values()] == ['saved', 'present', 'present', 'saved']


def test_rows_after_a_journal_line_cut_by_a_kill_stay_readable(tmp_path, server):
    server.route('/cat.jpg', Response(CAT, content_type='image/jpeg'))
    server.route('/dog.png', Response(DOG, content_type='image/png'))
    out = tmp_path / 'photos'
    out.mkdir()
    journal = out / '.gather_report.csv.partial'
    journal.write_text('url,label,status,reason,path\r\n' + server.url('/dog.png') + ',do')
    (out / 'dog').write_text('a file where the dog folder should be')
    entries = [Entry(server.url('/cat.jpg'), 'cat'), Entry(server.url('/dog.png'), 'dog')]
    with pytest.raises(OSError):  # cat saved and journaled, then dog fails
        gather(entries, str(out), **FAST)
    os.remove(out / 'dog')
    rows = gather(entries, str(out), **FAST)
    assert [row.status for row in rows] == ['present', 'saved']
    assert len(server.requests_for('/cat.jpg')) == 1  # known from the journal
    assert not journal.exists()


def test_cli_reads_gzipped_flickr_csv_with_label_names(tmp_path, server, capsys):
    server.route('/a.jpg', Response(CAT, content_type='image/jpeg'))
    server.route('/b.png', Response(DOG, content_type='image/png'))
    server.route('/ph.png', Response(PLACEHOLDER, content_type='image/png'))
    with open(os.path.join(DATA, 'flickr_style_head.csv'), newline='') as file:
        rows = list(csv.reader(file))
    assert rows[0] == ['', 'image_url', 'page_url', 'label', '_split']
    rows[1][1], rows[2][1], rows[3][1] = server.url('/a.jpg'), server.url('/b.png'), server.url('/ph.png')
    rows[2][3] = '19'
    rows[4][1] = rows[5][1] = server.url('/gone.jpg')
    listing = tmp_path / 'flickr_style.csv.gz'
    with gzip.open(listing, 'wt', newline='') as file:
        csv.writer(file).writerows(rows)
    (tmp_path / 'placeholder.png').write_bytes(PLACEHOLDER)
    out = tmp_path / 'photos'

    status = gather_module.main([
        str(listing), '--out', str(out), '--url-column', 'image_url', '--label-column', 'label',
        '--label-names', os.path.join(DATA, 'style_names.txt'), '--jobs', '2', '--timeout', '2',
        '--placeholder-image', str(tmp_path / 'placeholder.png'), '--no-progress'])
    assert status == 0
    assert files_under(out) == sorted(['Detailed/' + stored_name(CAT, '.jpg'),
                                       'Romantic/' + stored_name(DOG, '.png'),
                                       'gather_report.csv'])
    summary = capsys.readouterr().out
    assert 'gather: 2 saved, 0 already present, 3 skipped' in summary
    assert 'http-404' in summary and 'placeholder' in summary
    report = report_reasons(out / 'gather_report.csv')
    assert report[server.url('/ph.png')] == ('skipped', 'placeholder', '')


def test_read_entries_formats(tmp_path):
    names = read_class_names(os.path.join(DATA, 'style_names.txt'))
    assert len(names) == 20 and names[6] == 'Long Exposure'
    head = os.path.join(DATA, 'flickr_style_head.csv')
    gz = tmp_path / 'head.csv.gz'
    with open(head, 'rb') as source, gzip.open(gz, 'wb') as target:
        shutil.copyfileobj(source, target)
    entries = read_entries(str(gz), label_names=names)  # columns found by default
    assert entries[0] == Entry('http://farm2.staticflickr.com/1227/5159730964_124c1e63d8.jpg', 'Detailed')
    assert len(entries) == 5

    listing = tmp_path / 'urls.txt'
    listing.write_text('# comment\n\nhttp://h/a.jpg cat\nhttp://h/b.jpg\tLong Exposure \n')
    assert read_entries(str(listing)) == [Entry('http://h/a.jpg', 'cat'),
                                          Entry('http://h/b.jpg', 'Long Exposure')]
    with pytest.raises(DataError, match="no column 'link'"):
        read_entries(head, url_column='link')
    with pytest.raises(DataError, match="label '0' .* not an index"):
        read_entries(head, label_names=[])


def test_placeholder_hash_file_and_bad_label_file(tmp_path, capsys):
    good = tmp_path / 'hashes.txt'
    good.write_text(f'{"a" * 40}  placeholder.png  # from sha1sum\n\n')
    assert read_placeholder_hashes(str(good)) == {'a' * 40}
    bad = tmp_path / 'bad.txt'
    bad.write_text('not-a-hash\n')
    listing = tmp_path / 'urls.txt'
    listing.write_text('http://127.0.0.1:9/a.jpg cat\n')
    with pytest.raises(SystemExit) as exit_info:
        gather_module.main([str(listing), '--out', str(tmp_path / 'o'),
                            '--placeholder-hashes', str(bad)])
    assert exit_info.value.code == 2
    error = capsys.readouterr().err
    assert error.count('\n') == 1 and 'bad.txt:1' in error


def test_file_urls_are_refused(tmp_path):
    secret = tmp_path / 'secret.png'
    secret.write_bytes(DOG)
    rows = gather([Entry(secret.as_uri(), 'x'), Entry('ftp://h/a.jpg', 'x')],
                  str(tmp_path / 'out'), **FAST)
    assert [(row.status, row.reason) for row in rows] == [('skipped', 'bad-url')] * 2
    assert files_under(tmp_path / 'out') == ['gather_report.csv']


def test_a_host_that_trickles_bytes_meets_the_deadline(tmp_path, server):
    """10 bytes every 0.3 s never times a read out; the per-image deadline
    (here 1 s) skips it in about that time, with its own reason."""
    import time
    body = open(data_path('cat.jpg'), 'rb').read()[:4000]
    server.route('/slow.jpg', Response(body, content_type='image/jpeg',
                                       trickle=(10, 0.3)))
    start = time.monotonic()
    rows = gather([(server.url('/slow.jpg'), 'cat')], str(tmp_path / 'out'),
                  timeout=2, retries=0, deadline=1.0, progress=False)
    assert time.monotonic() - start < 5
    assert [(r.status, r.reason) for r in rows] == [('skipped', 'deadline')]


@pytest.mark.parametrize('delimiter', [';', '\t', ','])
def test_csv_lists_with_other_delimiters_are_read(tmp_path, delimiter):
    listing = tmp_path / 'list.csv'
    listing.write_text(delimiter.join(['image_url', 'label']) + '\n' +
                       delimiter.join(['http://a/1.jpg', 'cat']) + '\n' +
                       delimiter.join(['http://a/2.jpg', 'dog']) + '\n')
    assert read_entries(str(listing)) == [('http://a/1.jpg', 'cat'),
                                          ('http://a/2.jpg', 'dog')]
