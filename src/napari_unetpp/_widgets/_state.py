"""Models trained (or opened) in this session, shared between the widgets.

The train widget registers every finished run here; the reader registers a
model folder dropped onto napari; the predict widget lists what is registered
and connects to :data:`models_changed` to refresh its choices. Deliberately
tiny (a name -> checkpoint dict and one signal) and free of Qt, so it is
trivially testable and never holds a model or a layer in memory.

Example
-------
>>> from pathlib import Path
>>> register_model("em run 1", Path("runs/em/best"))
>>> registered_models()["em run 1"].name
'best'
>>> unregister_model("em run 1")
"""

from __future__ import annotations

import os
from pathlib import Path

from psygnal import Signal

__all__ = ["register_model", "unregister_model", "registered_models", "models_changed"]


class _Events:
    """Holder of the signal (psygnal signals are declared on a class)."""

    models_changed = Signal()


_events = _Events()
#: Emitted (no arguments) whenever a model is registered or removed.
models_changed = _events.models_changed
_models: dict[str, Path] = {}


def register_model(name: str, checkpoint: str | os.PathLike[str]) -> None:
    """Make a checkpoint (folder or .zip) available to the predict widget under ``name``.

    Registering an existing name replaces it (the newest run wins), and moves it
    to the end, so ``list(registered_models())[-1]`` is always the latest.
    """
    _models.pop(name, None)
    _models[name] = Path(checkpoint)
    models_changed.emit()


def unregister_model(name: str) -> None:
    """Forget a model (no error when it is not registered)."""
    if _models.pop(name, None) is not None:
        models_changed.emit()


def registered_models() -> dict[str, Path]:
    """A copy of ``{name: checkpoint path}``, oldest first."""
    return dict(_models)
