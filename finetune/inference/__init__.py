"""Inference stage: classify images with a model file, batch jobs, ONNX
export."""

#: ONNX opsets the export writes: onnx_chainer's tested range
MIN_OPSET = 7
MAX_OPSET = 11
