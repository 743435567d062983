"""Class names a spreadsheet would run as formulas (issue 20 item 7) go
through gather's report and train's reports escaped (OWASP: a leading
apostrophe) and are read back by this project's own readers unchanged."""
import csv
import os

from finetune.common.fileio import read_csv_cell
from finetune.sources.url_images import gather_from_list, read_entries
from tests.support.processes import run_module
from tests.support.http_server import Response
from tests.support.photos import CAT
from tests.support.photos import DOG

#: no '/', so they can be class folders too
FOLDER_NAMES = ["=cmd|' calc'!A0", '+x']
#: the issue's name, for label files (which allow '/')
LABEL_NAMES = ["=cmd|' /C calc'!A0", '+x']


def raw_rows(path):
    with open(path, newline='', encoding='utf-8') as f:
        return list(csv.reader(f))


def test_formula_labels_survive_gathers_report_and_its_rereading(
        tmp_path, server):
    server.route('/a.jpg', Response(CAT, content_type='image/jpeg'))
    server.route('/b.png', Response(DOG, content_type='image/png'))
    listing = tmp_path / 'urls.txt'
    listing.write_text('%s %s\n%s %s\n' % (
        server.url('/a.jpg'), FOLDER_NAMES[0], server.url('/b.png'),
        FOLDER_NAMES[1]), encoding='utf-8')
    out = tmp_path / 'photos'
    settings = dict(timeout=2, retries=0, progress=False, jobs=2)
    gather_from_list(str(listing), str(out), **settings)
    assert sorted(os.listdir(out)) == sorted(FOLDER_NAMES +
                                             ['gather_report.csv'])
    report = str(out / 'gather_report.csv')
    labels = [row[1] for row in raw_rows(report)[1:]]
    assert labels == ["'" + name for name in FOLDER_NAMES]  # escaped
    # read back unchanged: as a URL list (url and label columns) ...
    assert [e.label for e in read_entries(report)] == FOLDER_NAMES
    # ... and by the resumption, which finds both images present
    summary = gather_from_list(str(listing), str(out), **settings)
    assert 'gather: 0 saved, 2 already present, 0 skipped' in summary
    again = tmp_path / 'again'
    gather_from_list(report, str(again), **settings)
    assert sorted(os.listdir(again)) == sorted(FOLDER_NAMES +
                                               ['gather_report.csv'])


def test_formula_class_names_are_escaped_in_trains_reports(tmp_path,
                                                           digits):
    data, pretrained = digits
    lists = tmp_path / 'lists'
    lists.mkdir()
    lines = ['%s/%s %d' % (digit, name, label)
             for label, digit in enumerate(('0', '1'))
             for name in sorted(os.listdir(os.path.join(data, digit)))[:6]]
    (lists / 'list.txt').write_text('\n'.join(lines) + '\n')
    (lists / 'labels.txt').write_text('\n'.join(LABEL_NAMES) + '\n',
                                      encoding='utf-8')
    out = tmp_path / 'out'
    result = run_module('finetune.train', '--data', data, '--pretrained',
                        pretrained, '--replace', 'ip2', '--label-file',
                        str(lists / 'list.txt'), '-o', str(out), '-E', '1',
                        '-j', '0', '--val-split', '0.5', '-B', '4')
    assert result.returncode == 0, result.stderr
    escaped = ["'" + name for name in LABEL_NAMES]
    per_class = raw_rows(out / 'per_class_accuracy.csv')
    assert [row[0] for row in per_class[1:]] == escaped
    confusion = raw_rows(out / 'confusion_matrix.csv')
    assert confusion[0][1:] == escaped
    assert [row[0] for row in confusion[1:]] == escaped
    for row in raw_rows(out / 'highest_loss.csv')[1:]:
        assert row[1] in escaped and row[2] in escaped
        assert read_csv_cell(row[1]) in LABEL_NAMES
    assert [read_csv_cell(row[0]) for row in per_class[1:]] == LABEL_NAMES
