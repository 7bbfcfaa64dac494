"""What dhtcart's commands share: exit codes, the help layout, one-line errors, the extras' checks.

Used by :mod:`dhtcart.cli` (and meant for the ``verify`` command too), so that
every command prints its errors, its help and its install hints the same way.
It imports only the standard library: ``dhtcart --version`` and a usage error
stay cheap.

>>> install_hint("redis")
'pip install "dhtcart[redis]"'
>>> extra_of("rich"), extra_of("redis.exceptions"), extra_of("json")
('server', 'redis', None)
>>> scheme_extra("rediss://h:6380/0"), scheme_extra("lmdb:///srv/x")
('redis', None)
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
from urllib.parse import urlsplit

__all__ = [
    "EXIT_BUSY",
    "EXIT_ERROR",
    "EXIT_MISSING_EXTRA",
    "EXIT_OK",
    "EXIT_STARTUP_FAILED",
    "EXIT_USAGE",
    "EXTRAS",
    "CommandError",
    "HelpFormatter",
    "error",
    "extra_of",
    "install_hint",
    "missing_modules",
    "require",
    "scheme_extra",
]

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_STARTUP_FAILED = 3  # uvicorn's own code when the server cannot start (port in use, app startup)
EXIT_BUSY = 4
EXIT_MISSING_EXTRA = 5

#: the optional extras and the modules each brings (pyproject.toml's ``[project.optional-dependencies]``)
EXTRAS: dict[str, tuple[str, ...]] = {
    "server": ("fastapi", "uvicorn", "httptools", "prometheus_client", "fastapi_offline", "rich"),
    "redis": ("redis",),
}

#: the URL schemes of dhtcart's own backends that need an extra
_SCHEME_EXTRAS = {"redis": "redis", "rediss": "redis"}


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """The help layout of every dhtcart command: descriptions and epilogs as written, wide option column."""

    def __init__(self, prog: str) -> None:
        super().__init__(prog, max_help_position=32)


class CommandError(Exception):
    """A failure to report in one line, with its exit code."""

    def __init__(self, message: str, code: int = EXIT_ERROR) -> None:
        super().__init__(message)
        self.code = code


def error(message: str) -> None:
    """Print ``dhtcart: error: message`` on stderr (argparse's own form of a usage error)."""
    print(f"dhtcart: error: {message}", file=sys.stderr)


def install_hint(extra: str) -> str:
    """The command that installs ``extra``."""
    return f'pip install "dhtcart[{extra}]"'


def extra_of(module: str | None) -> str | None:
    """The extra that brings ``module`` (or its top-level package), if one does."""
    if not module:
        return None
    top = module.partition(".")[0]
    return next((extra for extra, modules in EXTRAS.items() if top in modules), None)


def scheme_extra(url: str) -> str | None:
    """The extra a backend or membership URL of dhtcart's own schemes needs, if any."""
    return _SCHEME_EXTRAS.get(urlsplit(url).scheme.lower())


def missing_modules(*modules: str) -> list[str]:
    """The modules that cannot be imported, found without importing them (``prometheus_client``
    must not be imported before ``serve`` sets ``PROMETHEUS_MULTIPROC_DIR``)."""
    missing = []
    for name in modules:
        try:
            if importlib.util.find_spec(name) is None:
                missing.append(name)
        except (ImportError, ValueError):  # a parent package is missing, or the module was blocked
            missing.append(name)
    return missing


def require(extra: str, *modules: str) -> None:
    """Raise :class:`CommandError` (exit 5, with the install hint) unless ``modules`` (default: all
    of the extra's) can be imported."""
    missing = missing_modules(*(modules or EXTRAS[extra]))
    if missing:
        raise CommandError(
            f"this command needs {', '.join(missing)}, from the {extra} extra: {install_hint(extra)}",
            EXIT_MISSING_EXTRA,
        )
