"""Label images with a fine-tuned checkpoint in your own script.

    python examples/classify.py result/model_best.npz photo1.jpg photo2.jpg
"""
import sys

import finetune


def main(model_path, images):
    model = finetune.load(model_path)  # weights, class names, mean, crop
    labels, probs = model.predict(images)
    for path, label, row in zip(images, labels, probs):
        print('%s\t%s\t%.3f' % (path, label, row.max()))


if __name__ == '__main__':
    main(sys.argv[1], sys.argv[2:])
