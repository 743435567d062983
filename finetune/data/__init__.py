"""Data stage: class folders and label files, image checks, the mean image,
Chainer datasets, Caffe's transforms, the parallel loader and the frozen-
trunk feature cache."""
