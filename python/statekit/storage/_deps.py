"""Lazy imports of the ``[s3]`` extra (obstore, aiobotocore)."""

from __future__ import annotations

import importlib
from types import ModuleType

from statekit.errors import ConfigError

__all__ = ["require"]

INSTALL_HINT = "pip install statekit[s3]"


def require(module: str) -> ModuleType:
    """Import ``module`` from the s3 extra, or raise ConfigError naming the install command."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ConfigError(
            f"{module.split('.')[0]} is not installed: S3 and SQS storage need `{INSTALL_HINT}`"
        ) from exc
