"""Importing the reference moola code (HeinekenBottle/moola at 6ecdb28) from a checkout, with the
two stubs it needs to import on a plain PyTorch virtualenv. Shared by ``moola_pretrain_fixtures.py``
and ``moola_reference_fixtures.py``; no reference code lives in this repository.

* ``loguru`` (not installed): a no-op logger.
* ``moola.models``: the package without its registry ``__init__`` (which fails to import at that
  commit), pointing at the real ``src/moola/models``.
"""

import pathlib
import sys
import types


def stub_reference(reference: pathlib.Path, required: str) -> pathlib.Path:
    """Puts ``<reference>/src`` on the import path and installs the stubs; exits with a message
    when ``src/<required>`` is missing (not a moola checkout). Returns the ``src`` folder."""
    src = reference / "src"
    if not (src / required).is_file():
        sys.exit(f"{reference}: no src/{required} (not a moola checkout at 6ecdb28?)")
    sys.path.insert(0, str(src))

    loguru = types.ModuleType("loguru")
    noop = lambda *args, **kwargs: None  # noqa: E731
    loguru.logger = types.SimpleNamespace(
        **{level: noop for level in ("trace", "debug", "info", "success", "warning", "error", "critical", "exception")}
    )
    sys.modules["loguru"] = loguru

    models = types.ModuleType("moola.models")
    models.__path__ = [str(src / "moola" / "models")]
    models.__package__ = "moola.models"
    sys.modules["moola.models"] = models
    return src
