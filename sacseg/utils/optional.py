"""Optional dependencies, imported when first needed, with an error naming the extra that installs them."""

from __future__ import annotations

import importlib
from types import ModuleType

__all__ = ["MissingExtraError", "import_optional"]


class MissingExtraError(ImportError):
    """An optional dependency is not installed; the message says which ``sacseg[extra]`` brings it."""


def import_optional(module: str, extra: str, purpose: str) -> ModuleType:
    """``importlib.import_module(module)``, or MissingExtraError such as "TensorBoard logging (training)
    needs the module 'torch.utils.tensorboard', which is not installed: pip install 'sacseg[train]'".

    ``extra`` is the name of the ``[project.optional-dependencies]`` group in pyproject.toml that
    provides ``module``; ``purpose`` says what needs it.
    """
    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise MissingExtraError(
            f"{purpose} needs the module {module!r}, which is not installed ({err}): pip install 'sacseg[{extra}]'"
        ) from err
