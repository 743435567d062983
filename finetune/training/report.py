"""End-of-training analysis of the validation set.

Given the softmax outputs of the final model on every validation image,
:func:`write_evaluation_report` writes per-class accuracy, the confusion
matrix (CSV and PNG), the most-confused class pairs and the images with the
highest loss -- the ones most worth checking for a wrong label.

All arrays are NumPy (CPU); ``probs`` is (N, C) with rows summing to 1,
``labels`` is (N,) ints in ``[0, C)``.
"""
import os

import numpy as np

from finetune.common.fileio import atomic_write
from finetune.common.fileio import write_csv
from finetune.inference.batch import predict_paths
from finetune.inference.predictor import Predictor
from finetune.inference.predictor import top_k_accuracy

#: Probabilities are clipped to this before the log, so loss <= ~27.6.
MIN_PROB = 1e-12

#: Above this many classes the confusion-matrix PNG shows no cell counts.
MAX_ANNOTATED_CLASSES = 20

FILES = {'per_class': 'per_class_accuracy.csv',
         'confusion_csv': 'confusion_matrix.csv',
         'confusion_png': 'confusion_matrix.png',
         'confused_pairs': 'confused_pairs.csv',
         'highest_loss': 'highest_loss.csv'}


def confusion_matrix(labels, predictions, n_classes):
    """Count (true, predicted) pairs.

    Args:
        labels (array-like of int, (N,)): true classes in ``[0, n_classes)``.
        predictions (array-like of int, (N,)): predicted classes, same range.
        n_classes (int): C.

    Returns:
        numpy.ndarray: int64 (C, C); ``m[i, j]`` is the number of images of
        true class ``i`` predicted as ``j``. Rows sum to the class sizes.
    """
    labels = np.asarray(labels, dtype=np.int64).ravel()
    predictions = np.asarray(predictions, dtype=np.int64).ravel()
    if labels.shape != predictions.shape:
        raise ValueError('%d labels but %d predictions'
                         % (labels.size, predictions.size))
    for name, values in (('label', labels), ('prediction', predictions)):
        if values.size and (values.min() < 0 or values.max() >= n_classes):
            raise ValueError('%s out of range [0, %d): %d..%d' % (
                name, n_classes, values.min(), values.max()))
    flat = np.bincount(labels * n_classes + predictions,
                       minlength=n_classes * n_classes)
    return flat.reshape(n_classes, n_classes).astype(np.int64)


def per_class_accuracy(matrix):
    """Fraction of each true class predicted correctly (recall).

    Args:
        matrix (numpy.ndarray): (C, C) confusion matrix, rows = true class.

    Returns:
        numpy.ndarray: float64 (C,), in [0, 1]; NaN for a class with no
        images.
    """
    matrix = np.asarray(matrix)
    totals = matrix.sum(axis=1).astype(np.float64)
    correct = np.diag(matrix).astype(np.float64)
    accuracy = np.full(totals.shape, np.nan)
    np.divide(correct, totals, out=accuracy, where=totals > 0)
    return accuracy


def most_confused_pairs(matrix, class_names, k=10):
    """The off-diagonal cells with the largest counts.

    Args:
        matrix (numpy.ndarray): (C, C) confusion matrix, rows = true class.
        class_names (list of str): C names.
        k (int): at most this many pairs.

    Returns:
        list of (str, str, int): ``(true_name, predicted_name, count)``,
        count descending, then by true name, then predicted name; cells with
        count 0 are left out.
    """
    matrix = np.asarray(matrix)
    _check_names(class_names, matrix.shape[0])
    rows, cols = np.nonzero(matrix)
    pairs = [(class_names[i], class_names[j], int(matrix[i, j]))
             for i, j in zip(rows, cols) if i != j]
    pairs.sort(key=lambda pair: (-pair[2], pair[0], pair[1]))
    return pairs[:max(int(k), 0)]


def example_losses(probs, labels):
    """Cross-entropy of each example: ``-log(max(p_true, MIN_PROB))``.

    Args:
        probs (numpy.ndarray): (N, C) softmax outputs.
        labels (numpy.ndarray): (N,) true classes.

    Returns:
        tuple: ``(p_true, loss)``, both float64 (N,); loss in nats.
    """
    probs = np.asarray(probs, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64)
    p_true = probs[np.arange(len(labels)), labels]
    return p_true, -np.log(np.maximum(p_true, MIN_PROB))


def highest_loss_examples(probs, labels, paths, class_names, k=20):
    """The validation images the model finds least plausible.

    Args:
        probs (numpy.ndarray): (N, C) softmax outputs.
        labels (numpy.ndarray): (N,) true classes.
        paths (list of str): N image paths.
        class_names (list of str): C names.
        k (int): at most this many examples.

    Returns:
        list of dict: keys ``path``, ``true`` (label name), ``predicted``
        (argmax name), ``p_true``, ``p_predicted`` (probabilities) and
        ``loss`` (nats); loss descending, ties in input order.
    """
    probs, labels = _check_inputs(probs, labels, paths, class_names)
    p_true, loss = example_losses(probs, labels)
    predicted = probs.argmax(axis=1)
    order = np.argsort(-loss, kind='stable')[:max(int(k), 0)]
    return [{'path': paths[i],
             'true': class_names[labels[i]],
             'predicted': class_names[predicted[i]],
             'p_true': float(p_true[i]),
             'p_predicted': float(probs[i, predicted[i]]),
             'loss': float(loss[i])} for i in order]


def write_evaluation_report(out_dir, probs, labels, paths, class_names,
                            k_pairs=10, k_examples=20):
    """Write the five report files into ``out_dir`` and summarize them.

    Args:
        out_dir (str): directory, created if missing.
        probs (numpy.ndarray): float (N, C) softmax outputs, N >= 1.
        labels (numpy.ndarray): int (N,) true classes.
        paths (list of str): N image paths (as shown to the user).
        class_names (list of str): C names.
        k_pairs (int): rows in ``confused_pairs.csv``.
        k_examples (int): rows in ``highest_loss.csv``.

    Returns:
        dict: ``n_examples``, ``n_classes``, ``top1_accuracy``,
        ``top5_accuracy`` (top-``top5_k`` with ``top5_k = min(5, C)``),
        ``mean_class_accuracy`` (mean over classes with images),
        ``confused_pairs`` (as :func:`most_confused_pairs`), ``out_dir`` and
        ``files`` (``{key: path}``, keys as :data:`FILES`). Accuracies are
        fractions in [0, 1].
    """
    probs, labels = _check_inputs(probs, labels, paths, class_names)
    if len(labels) == 0:
        raise ValueError('no validation examples to evaluate')
    n_classes = probs.shape[1]
    predictions = probs.argmax(axis=1)
    matrix = confusion_matrix(labels, predictions, n_classes)
    accuracy = per_class_accuracy(matrix)
    pairs = most_confused_pairs(matrix, class_names, k_pairs)
    examples = highest_loss_examples(probs, labels, paths, class_names,
                                     k_examples)
    files = {key: os.path.join(out_dir, name) for key, name in FILES.items()}
    os.makedirs(out_dir, exist_ok=True)
    write_per_class_csv(files['per_class'], matrix, class_names)
    write_confusion_csv(files['confusion_csv'], matrix, class_names)
    plot_confusion_matrix(matrix, class_names, files['confusion_png'])
    write_csv(files['confused_pairs'], ['true', 'predicted', 'count'],
               pairs)
    columns = ['path', 'true', 'predicted', 'p_true', 'p_predicted', 'loss']
    write_csv(files['highest_loss'], columns,
               [[_cell(e[c]) for c in columns] for e in examples])
    k = min(5, n_classes)
    has_images = ~np.isnan(accuracy)
    return {'n_examples': int(len(labels)),
            'n_classes': int(n_classes),
            'top1_accuracy': float(np.mean(predictions == labels)),
            'top5_accuracy': float(top_k_accuracy(
                np.asarray(probs), np.asarray(labels), k)),
            'top5_k': k,
            'mean_class_accuracy': float(np.mean(accuracy[has_images])),
            'confused_pairs': pairs,
            'out_dir': out_dir,
            'files': files}


def format_summary(summary, n_pairs=3):
    """A few lines for the console describing :func:`write_evaluation_report`.

    Args:
        summary (dict): its return value.
        n_pairs (int): how many confused pairs to list.

    Returns:
        str: lines joined with newlines, no trailing newline.
    """
    lines = ['validation: %d images, %d classes'
             % (summary['n_examples'], summary['n_classes']),
             'top-1 accuracy %.2f%%, top-%d accuracy %.2f%%, '
             'mean per-class accuracy %.2f%%'
             % (100 * summary['top1_accuracy'], summary['top5_k'],
                100 * summary['top5_accuracy'],
                100 * summary['mean_class_accuracy'])]
    pairs = summary.get('confused_pairs', [])[:n_pairs]
    if pairs:
        lines.append('most confused (true -> predicted): ' + ', '.join(
            '%s -> %s (%d)' % pair for pair in pairs))
    lines.append('report written to %s (see highest_loss.csv for images '
                 'that may be mislabeled)' % summary['out_dir'])
    return '\n'.join(lines)


def write_per_class_csv(path, matrix, class_names):
    """``class,n,correct,accuracy``; accuracy is ``nan`` for empty classes."""
    accuracy = per_class_accuracy(matrix)
    rows = [[name, int(matrix[i].sum()), int(matrix[i, i]),
             _cell(accuracy[i])] for i, name in enumerate(class_names)]
    write_csv(path, ['class', 'n', 'correct', 'accuracy'], rows)


def write_confusion_csv(path, matrix, class_names):
    """Header ``true\\predicted,<names...>``, then one row per true class."""
    rows = [[name] + [int(c) for c in matrix[i]]
            for i, name in enumerate(class_names)]
    write_csv(path, ['true\\predicted'] + list(class_names), rows)


def plot_confusion_matrix(matrix, class_names, path, max_label=24):
    """Write the confusion matrix as a PNG heat map.

    Rows are true classes, columns predicted; color is the image count (with
    a colorbar). Cells show their counts when C <= 20. The figure grows with
    C (about 0.3 inch per class at 100 dpi) so 50 class names stay legible.

    Args:
        matrix (numpy.ndarray): (C, C) counts.
        class_names (list of str): C names; longer than ``max_label``
            characters are shortened with an ellipsis in the middle.
        path (str): destination .png, written atomically.

    Returns:
        str: ``path``.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    matrix = np.asarray(matrix)
    n = matrix.shape[0]
    side = max(6.0, 0.3 * n + 3.0)
    fontsize = 9 if n <= 20 else 7
    fig = Figure(figsize=(side + 1.5, side), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    image = ax.imshow(matrix, cmap='Blues', interpolation='nearest',
                      vmin=0, vmax=max(int(matrix.max()), 1))
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label='images')
    names = [_shorten(str(name), max_label) for name in class_names]
    ticks = np.arange(n)
    ax.set_xticks(ticks)
    ax.set_yticks(ticks)
    ax.set_xticklabels(names, rotation=90, fontsize=fontsize)
    ax.set_yticklabels(names, fontsize=fontsize)
    ax.set_xlabel('predicted class')
    ax.set_ylabel('true class')
    ax.set_title('Confusion matrix (%d images)' % int(matrix.sum()))
    if n <= MAX_ANNOTATED_CLASSES:
        threshold = matrix.max() / 2.0
        for i in range(n):
            for j in range(n):
                ax.text(j, i, str(int(matrix[i, j])), ha='center',
                        va='center', fontsize=fontsize,
                        color='white' if matrix[i, j] > threshold
                        else 'black')
    fig.tight_layout()
    with atomic_write(path, suffix='.png') as tmp:
        fig.savefig(tmp, format='png')
    return path


def _check_inputs(probs, labels, paths, class_names):
    """Validate shapes; return ``probs`` float64 (N, C), ``labels`` int64."""
    probs = np.asarray(probs, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64)
    if probs.ndim != 2:
        raise ValueError('probs must be (N, C), got shape %s'
                         % (probs.shape,))
    n, n_classes = probs.shape
    if labels.shape != (n,):
        raise ValueError('labels shape %s does not match %d rows of probs'
                         % (labels.shape, n))
    if len(paths) != n:
        raise ValueError('%d paths for %d examples' % (len(paths), n))
    _check_names(class_names, n_classes)
    if n and (labels.min() < 0 or labels.max() >= n_classes):
        raise ValueError('labels out of range [0, %d)' % n_classes)
    return probs, labels


def _check_names(class_names, n_classes):
    if len(class_names) != n_classes:
        raise ValueError('%d class names for %d classes'
                         % (len(class_names), n_classes))


def _cell(value):
    """CSV text for a value: floats round-trip exactly (``repr``)."""
    if isinstance(value, (float, np.floating)):
        return repr(float(value))  # 'nan' for NaN, parsed by float()
    return value


def _shorten(text, limit):
    """``text`` cut to ``limit`` characters by an ellipsis in the middle."""
    if len(text) <= limit:
        return text
    head = (limit - 1) // 2
    return text[:head] + '\u2026' + text[len(text) - (limit - 1 - head):]


def evaluate_and_report(output, net, val, names, preprocess, device, *,
                        root, batchsize, loaderjob, trunk_backend='auto'):
    """Probabilities on the validation set -> the evaluation report in
    ``output.out``, with ``output.tta`` (``output``: a
    :class:`~finetune.training.config.OutputOptions`, e.g.
    ``config.output``).

    ``net`` is the training FineTuneNet: with a frozen prefix, the images
    go through its own trunk runner (the OpenCV net built for the cache or
    the training steps; building a second one for the whole net held the
    weights twice more) and the head on Chainer; without one,
    ``trunk_backend`` (``--trunk-backend``) chooses what runs the net.
    ``val`` holds ``(path, label)`` entries, paths relative to ``root``
    (``--data``), read ``batchsize`` at a time by ``loaderjob``
    processes. Images that can no longer be read are left out of the
    report.
    """
    if not val:
        return None
    if net.n_frozen_layers:
        net = net.copy(mode='share')  # same weights and trunk runner
        net.from_features = False
        predictor = Predictor(net, names, preprocess, device=device,
                              backend='chainer', tta=output.tta)
    else:
        predictor = Predictor(net.net, names, preprocess, device=device,
                              backend=trunk_backend, tta=output.tta)
    rows = predict_paths(predictor, [os.path.join(root, p) for p, _ in val],
                         batchsize, loaderjob, progress=False)
    kept = [(path, label, probs) for (path, label), (_, probs, _)
            in zip(val, rows) if probs is not None]
    return write_evaluation_report(
        output.out, np.stack([probs for _, _, probs in kept]),
        np.array([label for _, label, _ in kept]),
        [path for path, _, _ in kept], names)
