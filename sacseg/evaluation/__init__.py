"""Evaluation of trained models: metrics, evaluate over a data set, Segmenter, prediction files, the official Cityscapes evaluator."""
