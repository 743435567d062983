"""Reads, writes and imports V1/V2 caffemodels with whatever protobuf is
installed; run by scripts/protobuf_matrix.sh under several protobufs."""
import google.protobuf, numpy as np, tempfile, os, chainer
from finetune.caffe import read_caffemodel, read_prototxt, import_caffemodel
from finetune.caffe.caffemodel import read_prototxt_param
from finetune.caffe.writer import write_caffemodel, random_weights
from finetune.models import CaffeGraph
L = os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', 'examples', 'lenet') + os.sep
net = read_caffemodel(L + 'lenet_iter_10000.caffemodel')
g = CaffeGraph.from_prototxt(L + 'lenet_deploy.prototxt')
import_caffemodel(g, L + 'lenet_iter_10000.caffemodel')
d = tempfile.mkdtemp()
w = random_weights(g, np.random.RandomState(0))
for v1 in (False, True):
    p = os.path.join(d, 'x%d.caffemodel' % v1)
    write_caffemodel(p, read_prototxt_param(L + 'lenet_deploy.prototxt'), w, v1=v1)
    g2 = CaffeGraph.from_prototxt(L + 'lenet_deploy.prototxt'); import_caffemodel(g2, p)
    assert np.array_equal(g2.ip1.W.array, w['ip1'][0])
print('protobuf', google.protobuf.__version__, 'ok:', [l.name for l in net.layers])
