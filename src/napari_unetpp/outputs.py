"""Output folders that never destroy user data: staging, renames, a lock, ownership.

Why: ``predict a.tif --out dir`` names its result ``dir/a_labels.tif``, which is also
the package's own pairing convention for ground truth; writing there blindly can
destroy a user's hand-made labels. So a run

* takes a lock file in the output folder (a second run into the same folder is
  refused while the first one lives; a lock left by a killed run is taken over);
* writes every result into a hidden staging folder beside its final place and
  renames it into place only when it is complete (an interrupted run leaves
  nothing half-written where results belong, and the staging folder is removed);
* replaces an existing file only if this package wrote it (TIFF ``Software`` tag,
  zarr attribute :data:`~napari_unetpp.stores.TOOL_KEY`) or the user said
  ``overwrite=True`` (``--overwrite``).

Example
-------
>>> import tempfile, pathlib
>>> folder = pathlib.Path(tempfile.mkdtemp())
>>> with OutputFolder(folder) as outputs:
...     outputs.check_free(["a_labels.tif"])
...     _ = outputs.stage("a_labels.tif").write_bytes(b"...")
...     outputs.commit("a_labels.tif").name
'a_labels.tif'
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from collections.abc import Iterable
from pathlib import Path
from types import TracebackType
from typing import Any

from .files import UserError

__all__ = ["OutputFolder", "written_by_tool", "check_writable_folder", "LOCK_NAME", "TIFF_SOFTWARE"]

LOCK_NAME = ".napari-unetpp.lock"
STAGING_PREFIX = ".napari-unetpp-staging-"
#: TIFF Software tag of every file the package writes.
TIFF_SOFTWARE = "napari-unetpp"


def check_writable_folder(folder: Path, what: str = "--out") -> None:
    """Create ``folder`` if needed and prove it writable, before any long work starts."""
    if folder.exists() and not folder.is_dir():
        raise UserError(f"{what} {folder} is a file; give a folder for the results")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".napari-unetpp-probe-{uuid.uuid4().hex[:8]}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise UserError(
            f"{what} {folder} is not writable ({exc.strerror or exc}); "
            "choose a folder you can write to"
        ) from None


def written_by_tool(path: Path) -> bool:
    """Whether ``path`` is a result this package wrote (and so may replace)."""
    if path.is_dir():
        for name, key in ((".zattrs", None), ("zarr.json", "attributes")):
            meta = _small_json(path / name)
            attrs = meta.get(key, {}) if key and isinstance(meta, dict) else meta
            if isinstance(attrs, dict) and "napari_unetpp" in attrs:
                return True
        return False
    if path.suffix.lower() == ".json" and path.is_file():  # run records, region rankings
        meta = _small_json(path)
        return isinstance(meta, dict) and meta.get("written_by") == TIFF_SOFTWARE
    if path.suffix.lower() in (".tif", ".tiff") and path.is_file():
        try:
            import tifffile

            with tifffile.TiffFile(path) as tif:
                return tif.pages[0].software == TIFF_SOFTWARE  # type: ignore[union-attr]
        except Exception:  # noqa: BLE001 - unreadable means: not provably ours
            return False
    return False


def _small_json(path: Path) -> Any:
    from .stores import read_regular_file

    try:
        return json.loads(read_regular_file(path, 2**20, "zarr metadata file"))
    except (OSError, ValueError, RecursionError):
        return {}


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class OutputFolder:
    """A run's view of an output folder: lock, staging folder, safe replacement.

    Use as a context manager; leaving it (normally, on an error or on Ctrl-C)
    removes the staging folder and releases the lock.
    """

    def __init__(self, folder: str | os.PathLike[str], overwrite: bool = False) -> None:
        self.folder = Path(folder)
        self.overwrite = overwrite
        self.staging = self.folder / f"{STAGING_PREFIX}{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self._lock = self.folder / LOCK_NAME
        self._locked = False

    def __enter__(self) -> OutputFolder:
        check_writable_folder(self.folder)
        self._acquire()
        try:
            self._remove_stale_staging()
            self.staging.mkdir()
        except BaseException:
            self._release()
            raise
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        shutil.rmtree(self.staging, ignore_errors=True)
        self._release()

    # ------------------------------------------------------------------ lock

    def _acquire(self) -> None:
        for _ in range(2):
            try:
                fd = os.open(self._lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                owner = self._lock_owner()
                if owner is not None and _pid_alive(owner):
                    raise UserError(
                        f"another napari-unetpp run (process {owner}) is writing into "
                        f"{self.folder}; wait for it to finish or choose another --out "
                        f"(if no run is active, delete {self._lock})"
                    ) from None
                self._lock.unlink(missing_ok=True)  # left by a killed run
                continue
            with os.fdopen(fd, "w") as handle:
                handle.write(str(os.getpid()))
            self._locked = True
            return
        raise UserError(f"cannot take the lock {self._lock}; another run is starting there")

    def _lock_owner(self) -> int | None:
        try:
            return int(self._lock.read_text().strip() or "0") or None
        except (OSError, ValueError):
            return None

    def _release(self) -> None:
        if self._locked and self._lock_owner() == os.getpid():
            self._lock.unlink(missing_ok=True)
        self._locked = False

    def _remove_stale_staging(self) -> None:
        """Staging folders of killed runs (their process is gone): internal, never results."""
        for path in self.folder.glob(f"{STAGING_PREFIX}*"):
            pid = path.name[len(STAGING_PREFIX) :].split("-")[0]
            if pid.isdigit() and not _pid_alive(int(pid)):
                shutil.rmtree(path, ignore_errors=True)

    # ------------------------------------------------------------------ outputs

    def check_free(self, names: Iterable[str]) -> None:
        """Refuse (before any work) to replace files this package did not write."""
        foreign = [
            n for n in names if (self.folder / n).exists() and not written_by_tool(self.folder / n)
        ]
        if foreign and not self.overwrite:
            listed = ", ".join(str(self.folder / n) for n in foreign[:3])
            more = f" and {len(foreign) - 3} more" if len(foreign) > 3 else ""
            raise UserError(
                f"{listed}{more} already exist(s) and were not written by napari-unetpp "
                "(they may be your own labels); refusing to overwrite. Choose another --out, "
                "or pass --overwrite to replace them"
            )

    def stage(self, name: str) -> Path:
        """Where to write result ``name`` before :meth:`commit` moves it into place."""
        return self.staging / name

    def commit(self, name: str) -> Path:
        """Move the finished ``name`` from staging into the folder (replacing an old result)."""
        source, target = self.staging / name, self.folder / name
        if target.exists() or target.is_symlink():
            self.check_free([name])  # a file that appeared since the check
            if target.is_dir() and not target.is_symlink():
                trash = self.staging / f".old-{uuid.uuid4().hex[:8]}"
                os.rename(target, trash)
                os.rename(source, target)
                shutil.rmtree(trash, ignore_errors=True)
                return target
        os.replace(source, target)
        return target
