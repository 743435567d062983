"""End-of-training analysis: confusion matrix, per-class accuracy, report."""
import csv
import math
import os

import numpy as np
import pytest
from PIL import Image

from finetune.inference.predictor import top_k_accuracy
from finetune.training import report as ev
def random_case(n=300, n_classes=7, seed=0):
    """Softmax-like probabilities (N, C), labels (N,), paths and names."""
    rng = np.random.RandomState(seed)
    logits = rng.normal(size=(n, n_classes)) * 2
    labels = rng.randint(0, n_classes, size=n)
    logits[np.arange(n), labels] += 1.5  # better than chance
    probs = np.exp(logits)
    probs /= probs.sum(axis=1, keepdims=True)
    paths = ['img_%03d.jpg' % i for i in range(n)]
    names = ['class_%d' % c for c in range(n_classes)]
    return probs, labels, paths, names


def read_csv(path):
    with open(path, newline='', encoding='utf-8') as f:
        return list(csv.reader(f))


def test_confusion_matrix_hand_counted():
    labels = [0, 0, 1, 1, 1, 2]
    predictions = [0, 1, 1, 1, 0, 2]
    m = ev.confusion_matrix(labels, predictions, 4)
    assert m.dtype == np.int64
    np.testing.assert_array_equal(m, [[1, 1, 0, 0],
                                      [1, 2, 0, 0],
                                      [0, 0, 1, 0],
                                      [0, 0, 0, 0]])


def test_confusion_matrix_matches_loop():
    rng = np.random.RandomState(1)
    labels = rng.randint(0, 9, size=1000)
    predictions = rng.randint(0, 9, size=1000)
    expected = np.zeros((9, 9), dtype=np.int64)
    for t, p in zip(labels, predictions):
        expected[t, p] += 1
    np.testing.assert_array_equal(
        ev.confusion_matrix(labels, predictions, 9), expected)


@pytest.mark.parametrize('labels, predictions', [
    ([0, 3], [0, 1]), ([0, 1], [0, -1]), ([0, 1, 2], [0, 1])])
def test_confusion_matrix_rejects_bad_input(labels, predictions):
    with pytest.raises(ValueError):
        ev.confusion_matrix(labels, predictions, 3)


def test_per_class_accuracy_with_empty_class():
    m = np.array([[3, 1, 0], [0, 0, 0], [1, 1, 2]])
    acc = ev.per_class_accuracy(m)
    assert acc[0] == 0.75 and acc[2] == 0.5
    assert math.isnan(acc[1])


def test_most_confused_pairs_order():
    m = np.array([[9, 2, 5, 0],
                  [5, 9, 0, 1],
                  [0, 2, 9, 0],
                  [0, 0, 0, 50]])
    names = ['dog', 'cat', 'ant', 'bee']
    pairs = ev.most_confused_pairs(m, names, k=10)
    # Ties broken by true name, then predicted name; diagonal and zeros out.
    assert pairs == [('cat', 'dog', 5), ('dog', 'ant', 5),
                     ('ant', 'cat', 2), ('dog', 'cat', 2),
                     ('cat', 'bee', 1)]
    assert ev.most_confused_pairs(m, names, k=2) == pairs[:2]
    assert ev.most_confused_pairs(np.diag([3, 4]), ['a', 'b']) == []


def test_highest_loss_examples():
    probs = np.array([[0.9, 0.1, 0.0],
                      [0.2, 0.7, 0.1],
                      [0.0, 1.0, 0.0],   # p_true == 0: loss clipped
                      [0.3, 0.3, 0.4],
                      [0.5, 0.25, 0.25]])
    labels = np.array([0, 0, 2, 2, 1])
    paths = ['a', 'b', 'c', 'd', 'e']
    names = ['x', 'y', 'z']
    top = ev.highest_loss_examples(probs, labels, paths, names, k=3)
    assert [e['path'] for e in top] == ['c', 'b', 'e']
    assert top[0]['loss'] == pytest.approx(-math.log(1e-12))
    assert top[1] == {'path': 'b', 'true': 'x', 'predicted': 'y',
                      'p_true': 0.2, 'p_predicted': 0.7,
                      'loss': pytest.approx(-math.log(0.2))}
    assert top[2]['loss'] == pytest.approx(-math.log(0.25))
    everything = ev.highest_loss_examples(probs, labels, paths, names, k=99)
    losses = [e['loss'] for e in everything]
    assert len(everything) == 5 and losses == sorted(losses, reverse=True)
    for e in everything:
        i = paths.index(e['path'])
        assert e['loss'] == pytest.approx(
            -math.log(max(probs[i, labels[i]], 1e-12)))


@pytest.mark.parametrize('n_classes', [3, 5, 12])
def test_top_k_accuracy_matches_rank_count(n_classes):
    probs, labels, _, _ = random_case(n=400, n_classes=n_classes, seed=2)
    k = min(5, n_classes)
    p_true = probs[np.arange(len(labels)), labels]
    better = (probs > p_true[:, None]).sum(axis=1)  # no ties: continuous
    expected = np.mean(better < k)
    assert float(top_k_accuracy(probs, labels, k)) == pytest.approx(expected)
    assert float(top_k_accuracy(probs, labels, 1)) == pytest.approx(
        np.mean(probs.argmax(axis=1) == labels))
    if n_classes > 5:
        assert expected < 1.0  # the test can tell top-5 from everything


def test_write_evaluation_report(tmp_path):
    probs, labels, paths, names = random_case()
    names[3] = 'with, comma "quoted"'
    out = str(tmp_path / 'report')
    summary = ev.write_evaluation_report(out, probs, labels, paths, names,
                                         k_pairs=6, k_examples=15)
    for key, name in ev.FILES.items():
        assert summary['files'][key] == os.path.join(out, name)
        assert os.path.getsize(summary['files'][key]) > 0
    assert sorted(os.listdir(out)) == sorted(ev.FILES.values())  # no temps

    predictions = probs.argmax(axis=1)
    expected = np.zeros((7, 7), dtype=np.int64)
    for t, p in zip(labels, predictions):
        expected[t, p] += 1

    rows = read_csv(summary['files']['confusion_csv'])
    assert rows[0][1:] == names
    assert [r[0] for r in rows[1:]] == names
    np.testing.assert_array_equal(
        np.array([[int(c) for c in r[1:]] for r in rows[1:]]), expected)

    rows = read_csv(summary['files']['per_class'])
    assert rows[0] == ['class', 'n', 'correct', 'accuracy']
    for c, row in enumerate(rows[1:]):
        in_class = labels == c
        assert row[0] == names[c]
        assert int(row[1]) == in_class.sum()
        assert int(row[2]) == (predictions[in_class] == c).sum()
        assert float(row[3]) == (predictions[in_class] == c).mean()

    rows = read_csv(summary['files']['confused_pairs'])
    assert rows[0] == ['true', 'predicted', 'count']
    assert len(rows) == 7
    counts = [int(r[2]) for r in rows[1:]]
    assert counts == sorted(counts, reverse=True)
    off = expected - np.diag(np.diag(expected))
    assert counts[0] == off.max()
    for true, pred, count in rows[1:]:
        assert expected[names.index(true), names.index(pred)] == int(count)

    rows = read_csv(summary['files']['highest_loss'])
    assert rows[0] == ['path', 'true', 'predicted', 'p_true',
                       'p_predicted', 'loss']
    assert len(rows) == 16
    loss = -np.log(probs[np.arange(len(labels)), labels])
    worst = np.argsort(-loss)[:15]
    assert [r[0] for r in rows[1:]] == [paths[i] for i in worst]
    np.testing.assert_allclose([float(r[5]) for r in rows[1:]],
                               [-math.log(probs[i, labels[i]])
                                for i in worst], rtol=1e-12)

    assert summary['n_examples'] == 300 and summary['n_classes'] == 7
    assert summary['top1_accuracy'] == pytest.approx(
        np.mean(predictions == labels))
    p_true = probs[np.arange(len(labels)), labels]
    assert summary['top5_k'] == 5
    assert summary['top5_accuracy'] == pytest.approx(
        np.mean((probs > p_true[:, None]).sum(axis=1) < 5))
    assert summary['mean_class_accuracy'] == pytest.approx(np.mean(
        [np.mean(predictions[labels == c] == c) for c in range(7)]))

    with Image.open(summary['files']['confusion_png']) as im:
        im.load()
        assert im.format == 'PNG'
        assert im.size[0] >= 500 and im.size[1] >= 500

    text = ev.format_summary(summary)
    assert '%.2f%%' % (100 * summary['top1_accuracy']) in text
    assert out in text


def test_report_with_empty_class_and_few_classes(tmp_path):
    probs = np.array([[0.8, 0.1, 0.1], [0.3, 0.6, 0.1], [0.1, 0.2, 0.7]])
    labels = np.array([0, 0, 2])  # class 'b' has no images
    summary = ev.write_evaluation_report(
        str(tmp_path), probs, labels, ['p', 'q', 'r'], ['a', 'b', 'c'])
    rows = read_csv(summary['files']['per_class'])
    assert rows[2][:3] == ['b', '0', '0'] and math.isnan(float(rows[2][3]))
    assert summary['mean_class_accuracy'] == pytest.approx(0.75)
    assert summary['top5_k'] == 3 and summary['top5_accuracy'] == 1.0
    assert summary['top1_accuracy'] == pytest.approx(2 / 3)
    assert read_csv(summary['files']['confused_pairs'])[1:] == [
        ['a', 'b', '1']]


def test_confusion_png_grows_with_classes(tmp_path):
    small = np.arange(9).reshape(3, 3)
    big = np.random.RandomState(3).randint(0, 30, size=(50, 50))
    names = ['a_rather_long_class_name_number_%02d' % i for i in range(50)]
    ev.plot_confusion_matrix(small, names[:3], str(tmp_path / 's.png'))
    ev.plot_confusion_matrix(big, names, str(tmp_path / 'b.png'))
    with Image.open(str(tmp_path / 's.png')) as s, \
            Image.open(str(tmp_path / 'b.png')) as b:
        assert b.size[0] > s.size[0] and b.size[1] > s.size[1]
        assert b.size[1] >= 50 * 25  # room for 50 label rows


def test_report_rejects_mismatched_inputs(tmp_path):
    probs, labels, paths, names = random_case(n=10, n_classes=3)
    with pytest.raises(ValueError):
        ev.write_evaluation_report(str(tmp_path), probs, labels, paths[:9],
                                   names)
    with pytest.raises(ValueError):
        ev.write_evaluation_report(str(tmp_path), probs, labels, paths,
                                   names[:2])
    with pytest.raises(ValueError):
        ev.write_evaluation_report(str(tmp_path), probs[:0], labels[:0], [],
                                   names)
