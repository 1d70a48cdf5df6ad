"""Functional operators: the scale-adaptive convolution and its implementations."""

from sacseg.ops.sac_conv import SAC_IMPLEMENTATIONS, sac_conv2d, sac_output_size

__all__ = ["SAC_IMPLEMENTATIONS", "sac_conv2d", "sac_output_size"]
