"""sacseg: scene parsing with scale-adaptive convolutions (Zhang et al., ICCV 2017)."""

__version__ = "0.1.0"
