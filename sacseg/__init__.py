"""sacseg: scene parsing with scale-adaptive convolutions (Zhang et al., ICCV 2017)."""

from importlib.metadata import PackageNotFoundError, version

# pyproject.toml holds the one version number; the installed package's metadata carries it here.
try:
    __version__ = version("sacseg")
except PackageNotFoundError:  # a source tree on sys.path that was never installed
    __version__ = "unknown"
