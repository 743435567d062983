"""Caffe files: read prototxt/caffemodel (V1 and V2), write, import."""
from finetune.caffe.caffemodel import read_caffemodel  # NOQA
from finetune.caffe.caffemodel import read_prototxt  # NOQA
from finetune.caffe.importer import import_caffemodel  # NOQA
