"""gather() and fetch_model() refuse the values the command line refuses;
labels and folder names that cannot be a class are not used."""
import os

import pytest

from finetune.common.errors import DataError, DownloadError
from finetune.sources.url_images import Entry, gather, safe_label
from finetune.weights.download import fetch_model
from tests.support.http_server import Response
from tests.support.photos import CAT


@pytest.mark.parametrize('name,value', [
    ('timeout', 0), ('timeout', -1), ('timeout', float('nan')),
    ('timeout', float('inf')), ('retries', -1), ('jobs', 0),
    ('max_bytes', 0), ('min_size', -1), ('deadline', 0),
    ('backoff', -0.5), ('retries', 1.5)])
def test_gather_refuses_meaningless_settings_before_writing(tmp_path, name,
                                                            value):
    out = tmp_path / 'photos'
    with pytest.raises(DataError, match=r'^--%s .*: must be ' %
                       name.replace('_', '-')):
        gather([Entry('http://127.0.0.1:9/a.jpg', 'cat')], str(out),
               progress=False, **{name: value})
    assert not out.exists()


@pytest.mark.parametrize('name,value', [
    ('timeout', 0), ('timeout', float('nan')), ('retries', -1)])
def test_fetch_model_refuses_meaningless_settings(tmp_path, name, value):
    with pytest.raises(DownloadError, match=r'^--%s .*: must be ' % name):
        fetch_model('alexnet', str(tmp_path / 'pretrained'),
                    progress=False, **{name: value})
    assert not (tmp_path / 'pretrained').exists()


@pytest.mark.parametrize('label', ['a\u2028b', 'a\u2029b',
                                   'a\udcffb'])
def test_labels_that_cannot_be_a_line_of_labels_txt_are_bad_labels(label):
    assert safe_label(label) is None


def test_an_undecodable_folder_in_out_does_not_stop_gather(tmp_path,
                                                           server):
    server.route('/a.jpg', Response(CAT, content_type='image/jpeg'))
    out = tmp_path / 'photos'
    os.makedirs(os.path.join(os.fsencode(str(out)), b'bad\xff'))
    rows = gather([Entry(server.url('/a.jpg'), 'cat')], str(out),
                  timeout=2, retries=0, progress=False)
    assert [row.status for row in rows] == ['saved']
