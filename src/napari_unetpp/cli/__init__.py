"""Command line: ``napari-unetpp train | predict | info | export | demo``.

The CLI is thin on purpose: it reads files, builds the config dataclasses, drives
the same engine generators the widgets drive (``training.Trainer.run``,
``inference.predict``) through ``events.drive`` and writes files. Reading and
writing files lives in ``files.py``, run records in ``runs.py`` and cluster
prediction (``--distributed``) in ``distributed.py``, so this package is only the
command line: one module per command (``train``, ``predict``, ``info``,
``export``, ``demo``), the parser, and shared output helpers (``common``,
``tables``). Everything a user can get wrong (a
missing file, mismatched shapes, a bad checkpoint) ends as one line
``napari-unetpp: error: ...`` and exit status 2, never a traceback.

Examples
--------
::

    napari-unetpp train --images em/image.tif --labels em/membranes.tif --out runs/em \\
        --widths 16 32 64 128 256 --iterations 2000
    napari-unetpp info runs/em
    napari-unetpp predict runs/em stack.tif --out results --depth 2
    napari-unetpp export runs/em --depth 2 --out models/em_L2 --zip
    napari-unetpp demo --model em
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from .common import PROG, _note, show_warning
from .parser import build_parser

__all__ = ["main", "build_parser"]


def _error(message: str) -> int:
    print(f"{PROG}: error: {message}", file=sys.stderr, flush=True)
    return 2


class _Terminated(KeyboardInterrupt):
    """SIGTERM (a cluster's time limit, torchrun stopping its other ranks): unwound as Ctrl-C
    is, so staged outputs and the output folder's lock are cleaned up, not left behind."""


def _terminate(signum: int, frame: object) -> None:
    raise _Terminated


@contextmanager
def _sigterm_unwinds() -> Iterator[None]:
    """While a command runs in the main thread, SIGTERM raises :class:`_Terminated`."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _terminate)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``napari-unetpp`` console script; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        with warnings.catch_warnings(), _sigterm_unwinds():
            warnings.showwarning = show_warning
            return int(args.func(args) or 0)
    except KeyboardInterrupt as exc:
        # outputs are staged: nothing half-written is left in --out
        _note("terminated" if isinstance(exc, _Terminated) else "interrupted")
        return 128 + (signal.SIGTERM if isinstance(exc, _Terminated) else signal.SIGINT)
    except BrokenPipeError:
        # `napari-unetpp info ... | head -1`: the reader is gone, which is not an error;
        # point stdout at devnull so the interpreter's final flush stays quiet too
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0
    except RecursionError:
        return _error("a file is nested too deeply to read (corrupt or hostile JSON)")
    except MemoryError:
        return _error("out of memory; use smaller inputs, tiles, batch or patch sizes")
    except (ValueError, OSError) as exc:
        # CheckpointError subclasses ValueError, FileNotFoundError OSError: user mistakes
        # and disk problems (read-only, full, missing) never show a traceback
        return _error(_one_line(exc, config=bool(getattr(args, "config", None))))


#: Engine names of settings in the words of the command line (a CLI user sets the flag).
_FLAGS = {
    "DataConfig.channel_axis=": "--channel-axis ",
    "DataConfig.channel_axis": "--channel-axis",
    "PredictConfig.rescale": "--rescale",
    "rescale='auto'": "auto object size (--diameter auto or --rescale auto)",
    "give rescale instead": "give --rescale instead",
    "give a number instead (model object size": "give --rescale F instead (F = model object size",
}

#: Settings a run.json section can hold too: named by their flag unless ``--config`` was
#: given (then the section's own name, ``PredictConfig.overlap``, says where to look).
_SETTING_FLAGS = {
    "PredictConfig.tile_size": "--tile",
    "PredictConfig.overlap": "--overlap",
    "PredictConfig.batch_size": "--batch-size",
    "PredictConfig.threshold": "--threshold",
    "PredictConfig.pruned_depth": "--depth",
    "PredictConfig.depth_tolerance": "--depth-tolerance",
    "PredictConfig.depths": "--depths",
    "PredictConfig.min_size": "--min-size",
    "PredictConfig.pixel_size": "--pixel-size",
    "PredictConfig.pixel_unit": "--pixel-unit",
    "TrainConfig.iterations": "--iterations",
    "TrainConfig.batch_size": "--batch-size",
    "TrainConfig.patch_size": "--patch-size",
    "TrainConfig.learning_rate": "--lr",
    "TrainConfig.validate_every": "--validate-every",
    "TrainConfig.preserve_weight": "--preserve",
    "TrainConfig.seed": "--seed",
}


def _one_line(exc: BaseException, config: bool = False) -> str:
    """The error in one line, engine names in the command line's words (``config``: a
    ``--config`` run.json was given, whose sections keep the engine's names)."""
    text = str(exc).strip() or type(exc).__name__
    if isinstance(exc, OSError) and exc.filename and str(exc.filename) not in text:
        text = f"{text}: {exc.filename}"
    names = _FLAGS if config else {**_SETTING_FLAGS, **_FLAGS}
    for engine, flag in names.items():
        text = text.replace(engine, flag)
    return " ".join(text.split())
