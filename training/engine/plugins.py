"""Plug-ins: modules a run config names under `plugins:`, imported before the config is
validated, on every rank, so that the data kinds, objectives, evaluations, fine-tuning tasks and
training extensions they register are known to the run (docs/ARCHITECTURE.md shows one of each).

An entry is a module name importable from the Python path (`my_project.vlm_plugins`), or the
path of a `.py` file, relative to the run config's folder or else to the working directory;
either may end in `:FUNCTION`, a function of the module called without arguments once it is
imported (for a module that registers only when asked to). A module is imported, and its
function called, once per process.
"""
from __future__ import annotations

import hashlib
import importlib
import importlib.util
import sys
from pathlib import Path

from data_pipeline.config import ConfigError

_CALLED: set[tuple[str, str]] = set()


def _module_name(path: Path) -> str:
    digest = hashlib.sha256(str(path).encode()).hexdigest()[:12]
    return f"x2vlm_plugin_{path.stem}_{digest}"


def _import_file(path: Path):
    name = _module_name(path)
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    return module


def _import(entry: str, base: Path, key: str):
    if not entry.endswith(".py"):
        return importlib.import_module(entry)
    candidates = [Path(entry)] if Path(entry).is_absolute() else [base / entry, Path(entry)]
    path = next((c.resolve() for c in candidates if c.is_file()), None)
    if path is None:
        raise ConfigError(f"{key}: {entry} exists neither beside the run file nor under the working directory")
    return _import_file(path)


def import_plugins(entries: list, base: Path, where: str) -> None:
    """Imports each of ENTRIES (BASE anchors relative paths); a ConfigError names the entry that
    cannot be imported or called (WHERE prefixes its key)."""
    if not isinstance(entries, list):
        raise ConfigError(f"{where}: expected a list of module names or .py files, got {entries!r}")
    for i, entry in enumerate(entries):
        key = f"{where}[{i}]"
        if not isinstance(entry, str) or not entry.strip(":"):
            raise ConfigError(f"{key}: expected a module name or the path of a .py file, got {entry!r}")
        target, _, function = entry.rpartition(":") if ":" in entry else (entry, "", "")
        try:
            module = _import(target, base, key)
            if function and (module.__name__, function) not in _CALLED:
                register = getattr(module, function, None)
                if not callable(register):
                    raise ConfigError(f"{key}: {target} has no function {function!r}")
                register()
                _CALLED.add((module.__name__, function))
        except ConfigError:
            raise
        except Exception as error:  # the plug-in's own failure: its type and message, in one line
            raise ConfigError(f"{key}: {entry} could not be loaded: {type(error).__name__}: {error}") from None
