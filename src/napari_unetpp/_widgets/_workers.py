"""Run engine generators off the GUI thread, report their errors, and record every run.

Every long engine job (``Trainer.run``, ``inference.predict``...) is a generator of
events that returns its result. :class:`JobRunner` drives one such generator in a
``napari.qt.threading.thread_worker`` (so the viewer never freezes), routes its
events to the widget on the GUI thread, and can ask the job to stop cleanly (the
engine's stopper: the job returns what it has) or quit it outright (the widget is
closing). ``JobRunner(inline=True)`` (or ``RUN_INLINE = True`` /
``NAPARI_UNETPP_INLINE=1``) runs the *same* generator synchronously, as
stardist-napari does, for deterministic tests and debugging.

:func:`save_run_record` writes ``run.json`` (the configs) and ``command.sh`` (the
equivalent ``napari-unetpp train|predict`` call) beside the outputs of every
widget run, so any GUI result can be reproduced from a shell or a cluster job.

Example
-------
>>> runner = JobRunner(inline=True)
>>> def job():
...     yield "half way"
...     return 42
>>> seen = []
>>> runner.start(job(), on_yield=seen.append, on_return=seen.append)
>>> seen
['half way', 42]
>>> format_command("predict", "m/best", "a.tif", out="res dir", config="res dir/run.json")
"napari-unetpp predict m/best a.tif --out 'res dir' --config 'res dir/run.json'"
"""

from __future__ import annotations

import json
import logging
import os
import shlex
import time
from collections.abc import Callable, Generator, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np

from ._jobs import JobQueue, Ticket

__all__ = [
    "RUN_INLINE",
    "USER_ERRORS",
    "EngineRuntimeError",
    "JobRunner",
    "report_error",
    "format_command",
    "save_run_record",
    "layer_file",
    "layer_data",
    "current_slice",
    "predict_labels_job",
]

logger = logging.getLogger(__name__)

#: Default for new runners: run jobs synchronously on the calling thread (tests, debugging).
RUN_INLINE: bool = os.environ.get("NAPARI_UNETPP_INLINE", "") == "1"
#: Errors that are the user's to fix: shown as their message only (CheckpointError is a ValueError).
USER_ERRORS: tuple[type[BaseException], ...] = (ValueError, OSError)
#: Arrays up to this size are saved beside a run so that ``command.sh`` can replay it.
MAX_SAVED_BYTES = 1 << 30

Callback = Callable[..., Any] | None


class EngineRuntimeError(Exception):
    """A ``RuntimeError`` raised inside a job, re-raised under another type.

    superqt's workers treat a ``RuntimeError`` as "the worker was deleted" and
    swallow it with a warning; torch reports most failures (CUDA errors, shape
    errors) as ``RuntimeError``, so they would vanish without this wrapper.
    """


def _relay(gen: Generator[Any, Any, Any]) -> Generator[Any, Any, Any]:
    """Drive ``gen`` inside the worker thread (a generator *function* for ``thread_worker``)."""
    try:
        return (yield from gen)
    except RuntimeError as exc:
        raise EngineRuntimeError(str(exc)) from exc


def report_error(exc: BaseException) -> None:
    """Tell the user what went wrong, in a napari notification.

    User errors (bad input, missing files, bad checkpoints) show their message
    only; anything else shows its type and message, and its traceback goes to
    the log (not to the user).
    """
    from napari.utils.notifications import show_error

    cause = exc.__cause__ if isinstance(exc, EngineRuntimeError) and exc.__cause__ else exc
    if isinstance(cause, USER_ERRORS):
        show_error(str(cause))
        return
    logger.error("napari-unetpp job failed", exc_info=cause)
    show_error(f"{type(cause).__name__}: {cause}")


class JobRunner:
    """A widget's handle on its jobs: at most one at a time, run by a shared queue.

    Give every runner of a viewer that viewer's queue (:func:`._jobs.queue_for`)
    so that no two torch jobs ever run at once; ``owner`` names the kind of job
    ("segment", "train", "prune", "preview") for the queue's ``busy(owner)``.
    Without a queue the runner has its own (scripts, tests).

    Parameters
    ----------
    inline
        Run jobs synchronously on the calling thread; ``None`` uses :data:`RUN_INLINE`.
    """

    def __init__(
        self, inline: bool | None = None, queue: JobQueue | None = None, owner: str = "job"
    ) -> None:
        self.inline = RUN_INLINE if inline is None else inline
        self.queue = queue if queue is not None else JobQueue()
        self.owner = owner
        self._ticket: Ticket | None = None

    @property
    def running(self) -> bool:
        """Whether a job was started (queued or running) and has not finished or been quit."""
        return self._ticket is not None and self._ticket.state != "done"

    @property
    def queued(self) -> bool:
        """Whether the job waits for another job of the viewer to finish."""
        return self._ticket is not None and self._ticket.state == "pending"

    @property
    def worker(self) -> Any:
        """The thread worker of the running job (None inline, queued or idle)."""
        return self._ticket.worker if self.running and self._ticket is not None else None

    def attach(self, native: Any) -> None:
        """Quit the job when ``native`` (a QWidget) is destroyed or the app quits."""
        from qtpy.QtWidgets import QApplication

        native.destroyed.connect(lambda *_: self.quit())
        app = QApplication.instance()
        if app is not None:
            app.aboutToQuit.connect(self.quit)

    def start(
        self,
        gen: Generator[Any, Any, Any],
        *,
        on_yield: Callback = None,
        on_return: Callback = None,
        on_error: Callback = None,
        on_finish: Callback = None,
        stop: Callable[[], None] | None = None,
    ) -> Any:
        """Queue ``gen``; callbacks run on the GUI thread. Returns the worker (None inline
        or while queued).

        ``on_error`` (if given) runs before the error is shown to the user;
        ``on_finish`` runs last in every case (returned, failed, stopped, or stopped
        before it started), but not after :meth:`quit`. ``stop`` asks the engine to
        stop cleanly (e.g. ``Trainer.stop``); :meth:`request_stop` and :meth:`quit` call it.
        """
        if self.running:
            raise ValueError("a job is already running: stop it first, or wait until it ends")
        ticket = Ticket(
            self.owner, gen, self.inline, on_yield, on_return, on_error, on_finish, stop
        )
        self._ticket = ticket
        self.queue.submit(ticket)
        return self.worker

    def request_stop(self) -> None:
        """Ask the job to stop at its next check (it still returns its result); a queued
        job is taken off the queue."""
        if self._ticket is not None:
            self.queue.cancel(self._ticket, drop=False)

    def quit(self) -> None:
        """Stop the job and drop it: no more callbacks (its widget closes or replaces it).

        The queue starts the next job only after this one's thread has ended.
        """
        ticket, self._ticket = self._ticket, None
        if ticket is not None:
            self.queue.cancel(ticket, drop=True)


# --------------------------------------------------------------------------- run records


def format_command(job: Literal["train", "predict"], *positional: str, **options: Any) -> str:
    """A shell-quoted ``napari-unetpp`` call.

    Options: ``None``/``False`` are left out, ``True`` is a bare flag, lists give
    several values; ``from_`` becomes ``--from``, underscores become dashes.
    """
    parts = ["napari-unetpp", job, *positional]
    for key, value in options.items():
        if value is None or value is False:
            continue
        parts.append("--" + key.rstrip("_").replace("_", "-"))
        if value is True:
            continue
        if isinstance(value, (list, tuple)):
            parts.extend(str(v) for v in value)
        else:
            parts.append(str(value))
    return " ".join(shlex.quote(str(p)) for p in parts)


def new_run_dir(folder: str | os.PathLike[str], name: str) -> Path:
    """A fresh ``<name>-<timestamp>`` folder under ``folder`` (never reuses an existing one)."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in name)[:40]
    base = Path(folder).expanduser() / f"{safe}-{stamp}"
    run_dir, n = base, 1
    while run_dir.exists():
        run_dir, n = base.with_name(f"{base.name}-{n}"), n + 1
    run_dir.mkdir(parents=True)
    return run_dir


def save_run_record(
    folder: str | os.PathLike[str],
    job: Literal["train", "predict"],
    configs: dict[str, Any],
    cli_command: str,
) -> tuple[Path, Path]:
    """Write ``run.json`` (``configs``) and an executable ``command.sh`` into ``folder``.

    ``configs`` holds the sections the CLI's ``--config`` reads (``model``,
    ``train``, ``data``, ``predict``, and ``images``/``labels``/``from``); the
    plugin version is added. Returns both paths.
    """
    from .. import __version__

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    run_json = folder / "run.json"
    run_json.write_text(json.dumps({"version": __version__, **configs}, indent=2, default=str))
    script = folder / "command.sh"
    script.write_text(
        "#!/bin/sh\n"
        f"# The napari-unetpp {job} run that the napari widget started, as a shell command.\n"
        "set -e\n"
        f"{cli_command}\n"
    )
    script.chmod(0o755)
    return run_json, script


def layer_file(layer: Any, folder: str | os.PathLike[str], stem: str) -> str:
    """A file holding ``layer``'s data, for ``command.sh``.

    An Image layer opened from a file uses that file; other data (painted
    labels, samples, arrays from scripts) is saved as ``folder/stem.tif`` when it
    is in memory and not huge; otherwise a ``<...>`` placeholder says what to put.
    """
    source = getattr(getattr(layer, "source", None), "path", None)
    if source and Path(source).is_file() and type(layer).__name__ == "Image":
        return str(Path(source).resolve())
    data = layer_data(layer)
    if not hasattr(data, "__array__") or type(data).__module__.split(".")[0] != "numpy":
        return f"<{stem}: save layer {layer.name!r} to a file>"
    if data.nbytes > MAX_SAVED_BYTES:
        return f"<{stem}: save layer {layer.name!r} to a file>"
    import tifffile

    path = Path(folder) / f"{stem}.tif"
    path.parent.mkdir(parents=True, exist_ok=True)
    tifffile.imwrite(path, data)
    return str(path.resolve())


def layer_files(layers: Sequence[Any], folder: str | os.PathLike[str], prefix: str) -> list[str]:
    """:func:`layer_file` for several layers (``prefix_0``, ``prefix_1``...)."""
    return [layer_file(layer, folder, f"{prefix}_{n}") for n, layer in enumerate(layers)]


# --------------------------------------------------------------------------- layers and previews


def layer_data(layer: Any) -> Any:
    """A layer's array (the full-resolution level of a multiscale layer)."""
    return layer.data[0] if getattr(layer, "multiscale", False) else layer.data


def current_slice(
    layer: Any, world_point: Sequence[float], channel_axis: int | None, spatial_dims: int
) -> np.ndarray:
    """What a ``spatial_dims`` model sees at the viewer's position: the slice shown now
    (2D) or the volume (3D), with the channels (if any) moved last."""
    data = layer_data(layer)
    point = [int(round(p)) for p in layer.world_to_data(world_point)]
    if channel_axis is not None:
        channel_axis %= data.ndim
        data = np.moveaxis(data, channel_axis, -1)
        if len(point) == data.ndim:  # an RGB layer's point has no channel coordinate
            del point[channel_axis]
    lead = data.ndim - (channel_axis is not None) - spatial_dims
    index = tuple(int(np.clip(point[a], 0, data.shape[a] - 1)) for a in range(max(lead, 0)))
    return np.asarray(data[index])


def predict_labels_job(
    checkpoint: str | os.PathLike[str],
    image: np.ndarray,
    device: str = "auto",
    *,
    channels_last: bool = False,
) -> Generator[Any, Any, np.ndarray]:
    """Engine job: labels of ``image`` from a saved model at its recommended depth.

    Used for quick previews (a slice at a time); the predict widget is the full tool.
    """
    from ..checkpoint import load_checkpoint
    from ..config import PredictConfig
    from ..inference import predict
    from ..postprocess import probabilities_to_labels

    model, info = load_checkpoint(checkpoint, device="cpu")
    depth = int(info.metrics.get("best_depth") or model.config.depth)
    data = info.data.replace(channel_axis=-1 if channels_last else None)
    config = PredictConfig(
        depths=(depth,), device=device, tile_size=(256,) * model.config.spatial_dims
    )
    probabilities = yield from predict(model, image, config, data)
    return probabilities_to_labels(probabilities[depth], info.model, data)
