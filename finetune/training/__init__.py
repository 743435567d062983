"""Training stage: configuration, trainer assembly, Caffe's solver, network
surgery, the learning-rate finder, data-parallel ranks and the evaluation
report."""
