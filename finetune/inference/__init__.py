"""Inference stage: classify images with a model file, batch jobs, ONNX
export."""
