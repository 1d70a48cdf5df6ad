"""Exports: label-id PNGs as evaluators expect them, ONNX graphs checked against onnxruntime."""
