"""Which storage backend the settings name, and the one place that builds it.

Each backend's module registers a factory under its name (`@register("s3")`), as cloudpathlib's clients do;
VPM_STORAGE names one (or S3_ENABLED, as before: vpm.core.config keeps the two in step). A backend's module is
imported only when it is asked for. A new backend (GCS, Azure) is one module with a registered factory, plus its
name in config.STORAGE_BACKENDS and in BUILT_IN below.
"""

from __future__ import annotations

from collections.abc import Callable
from importlib import import_module
from typing import Any

from vpm.core.config import STORAGE_BACKENDS, ConfigError
from vpm.core.storage_contract import Storage

# The module that registers each backend's factory.
BUILT_IN = {"local": "vpm.backends.local_storage", "s3": "vpm.backends.s3_storage"}

Factory = Callable[[Any], Storage]
_factories: dict[str, Factory] = {}


def register(name: str) -> Callable[[Factory], Factory]:
    """Decorator: `factory(settings) -> Storage` builds the backend called `name`."""

    def add(factory: Factory) -> Factory:
        _factories[name] = factory
        return factory

    return add


def backend_name(settings) -> str:
    """The backend the settings choose: their `storage_backend`, or S3_ENABLED's for a bare settings object."""
    name = getattr(settings, "storage_backend", None) or ("s3" if settings.s3_enabled else "local")
    if name not in BUILT_IN and name not in _factories:
        raise ConfigError(f"Invalid VPM_STORAGE: must be one of {', '.join(STORAGE_BACKENDS)} (got {name!r})")
    return name


def make_storage(settings) -> Storage:
    """The storage the settings describe: a bucket for s3, else the local VPM_DATA_DIR folder."""
    name = backend_name(settings)
    if name not in _factories:
        import_module(BUILT_IN[name])  # registers its factory
    return _factories[name](settings)
