"""Functional operators: the scale-adaptive convolution, its implementations and the choice of its sampling kernels."""

from sacseg.ops.backend import SAMPLING_BACKENDS, get_sampling_backend, sampling_backend, set_sampling_backend
from sacseg.ops.sac_conv import SAC_IMPLEMENTATIONS, sac_conv2d, sac_output_size
from sacseg.ops.selfcheck import cuda_status

__all__ = [
    "SAC_IMPLEMENTATIONS",
    "SAMPLING_BACKENDS",
    "cuda_status",
    "get_sampling_backend",
    "sac_conv2d",
    "sac_output_size",
    "sampling_backend",
    "set_sampling_backend",
]
