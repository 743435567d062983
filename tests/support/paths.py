"""Where the real data files the tests read are (tests/assets, and the
Caffe-trained LeNet of examples/lenet)."""
import os

TESTS = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ASSETS = os.path.join(TESTS, 'assets')
LENET = os.path.join(TESTS, '..', 'examples', 'lenet')


def data_path(*parts):
    """Path of a file under tests/assets."""
    return os.path.join(ASSETS, *parts)
