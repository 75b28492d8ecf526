"""Standard-library modules that a dependency imports when it loads but a node never uses, left
unloaded until first used, to keep them out of the daemon's memory (idle RSS, issue 17).

- `urllib.request` (with http.client and the email package, ~2.9 MB of RSS): paho-mqtt imports
  it for an `mqtt_proxy` environment variable, which it reads only when PySocks is installed
  (a node has not). Should it be used after all, it loads then and works as ever.
- `uuid`: paho-mqtt makes a random client id with it when none is given; the node gives its id.

Not importlib's LazyLoader: an `import` statement reads the module's `__spec__`, which makes a
lazy module load at once. Here the placeholder has a plain `__spec__`, and only an attribute it
lacks loads the real module (which then replaces it in `sys.modules` and in its package).
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import types

DEFERRED = ("urllib.request", "uuid")


class _Placeholder(types.ModuleType):
    def __getattr__(self, attr: str):
        name = self.__name__
        if sys.modules.get(name) is self:
            del sys.modules[name]
        return getattr(importlib.import_module(name), attr)


def defer_imports(names: tuple[str, ...] = DEFERRED) -> None:
    for name in names:
        if name in sys.modules:
            continue
        spec = importlib.util.find_spec(name)
        if spec is None:
            continue
        placeholder = _Placeholder(name)
        placeholder.__spec__ = spec
        sys.modules[name] = placeholder
        parent, _, child = name.rpartition(".")
        if parent:  # as an import would: `urllib.request` is an attribute of `urllib`
            setattr(importlib.import_module(parent), child, placeholder)
