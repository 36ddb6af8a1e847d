"""Where the docks sit and when they leave: scrolling inside the dock, a tab beside the
other UNet++ dock, and knowing when a dock was closed.

Why apart from :mod:`._ui` (what the rows show): napari docks a widget's ``.native`` as
it is, stacks a second dock under the first, and never deletes a closed dock's widget;
each dock needs the same three answers to that, whatever its rows hold (issue 16).
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from typing import Any

from magicgui.widgets import Container


def scroll_inside(container: Container) -> Any:
    """Put a dock's rows into a vertical scroll area inside the widget napari docks.

    Why: napari docks ``container.native`` as it is, without a scroll area; the Segment
    dock (with a run's status) and the Train dock each need ~1000 px of height, so on a
    laptop, or with both docks stacked, Qt squeezed buttons below their text or grew the
    window past the screen. magicgui's ``scrollable=True`` wraps a scroll area *around*
    ``.native``, which napari never docks (orphaned, it kept resizing the dock's width:
    issue 16). The area is never narrower than the rows (no horizontal scrolling).
    Returns the QWidget that holds the rows (add more rows to its layout).
    """
    from qtpy.QtCore import QEvent, QSize, Qt
    from qtpy.QtWidgets import QFrame, QScrollArea, QVBoxLayout, QWidget

    class Rows(QScrollArea):
        def minimumSizeHint(self) -> QSize:  # noqa: N802 (Qt's name)
            rows, bar = self.widget(), self.verticalScrollBar()
            width = 0 if rows is None else rows.minimumSizeHint().width()
            return QSize(width + (0 if bar is None else bar.sizeHint().width()), 0)

        def eventFilter(self, obj: Any, event: Any) -> bool:  # noqa: N802 (Qt's name)
            # rows shown or hidden (Advanced expanded): the dock's minimum width follows,
            # else the dock kept the width measured with them hidden and clipped them
            if obj is self.widget() and event.type() == QEvent.Type.LayoutRequest:
                self.updateGeometry()
            return bool(super().eventFilter(obj, event))

    outer, inner = container.native, QWidget()
    inner.setLayout(outer.layout())  # Qt moves the layout (magicgui keeps its handle) and rows
    rows = Rows()
    rows.setWidgetResizable(True)
    rows.setFrameShape(QFrame.Shape.NoFrame)
    rows.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
    rows.setWidget(inner)
    layout = QVBoxLayout(outer)
    layout.setContentsMargins(0, 0, 0, 0)
    layout.addWidget(rows)
    return inner


#: This package's docks (their ``.native``), for :func:`share_dock_area`; weak: a closed
#: dock is not kept.
_DOCKS: weakref.WeakSet[Any] = weakref.WeakSet()


def share_dock_area(native: Any) -> None:
    """Once docked, put this dock in a tab beside an open UNet++ dock of the same area,
    and raise it.

    Why: napari stacks a second dock under the first and its ``resizeDocks`` left the
    later one ~50 px (one row) at 1600x1000, whichever size hints we gave (issue 16).
    Each dock needs most of a laptop's height, so tabs give both their use. napari's
    public ``add_dock_widget(tabify=True)`` is the caller's choice (the Plugins menu does
    not pass it) and the manifest has no such option, so this uses Qt's public
    ``QMainWindow.tabifyDockWidget`` once napari has docked the widget; anything
    unexpected (no main window, a floating dock) leaves napari's layout as it is.
    """
    from qtpy.QtCore import QEvent, QObject, QTimer

    _DOCKS.add(native)
    state = {"done": False, "pending": False}

    def attempt() -> None:
        state["pending"] = False
        if state["done"]:
            return
        try:
            state["done"] = _tabify_beside_ours(native)
        except (RuntimeError, AttributeError, TypeError):  # deleted, or a napari change
            state["done"] = True

    class _Docked(QObject):
        def eventFilter(self, obj: Any, event: Any) -> bool:  # noqa: N802 (Qt's name)
            kinds = (QEvent.Type.ParentChange, QEvent.Type.Show)
            if not state["done"] and not state["pending"] and event.type() in kinds:
                state["pending"] = True  # after napari's add_dock_widget (its resizeDocks)
                QTimer.singleShot(0, attempt)
            return False

    native.installEventFilter(_Docked(native))


def _tabify_beside_ours(native: Any) -> bool:
    """Tabify ``native``'s dock onto another of :data:`_DOCKS` in its area; False while
    ``native`` is not docked in a main window yet (try again later)."""
    from qtpy.QtCore import Qt
    from qtpy.QtWidgets import QDockWidget, QMainWindow

    def dock_of(widget: Any) -> Any:
        while widget is not None and not isinstance(widget, QDockWidget):
            widget = widget.parentWidget()
        return widget

    dock = dock_of(native)
    window = None if dock is None else dock.parentWidget()
    if not isinstance(window, QMainWindow):
        return False
    area = window.dockWidgetArea(dock)
    if dock.isFloating() or area == Qt.DockWidgetArea.NoDockWidgetArea:
        return True  # floated by the user: theirs to place

    def beside(other: Any) -> Any:
        """``other``'s dock if it is open in ``dock``'s area, else None."""
        try:  # a closed viewer's dock: its Qt objects may be deleted
            found = dock_of(other)
            fits = (
                found is not None
                and found is not dock
                and found.parentWidget() is window
                and not found.isFloating()
                and not found.isHidden()
                and window.dockWidgetArea(found) == area
            )
        except RuntimeError:
            return None
        return found if fits else None

    others = [d for d in (beside(n) for n in list(_DOCKS) if n is not native) if d is not None]
    if others:
        window.tabifyDockWidget(others[-1], dock)
        dock.show()
        dock.raise_()
    return True


def unproxied(viewer: Any) -> Any:
    """The viewer behind napari's ``PublicOnlyProxy`` (each plugin dock gets its own proxy,
    and everything reached through it is proxied too, so identity checks fail on it)."""
    for _ in range(8):  # proxies of proxies; bounded, whatever the object says
        inner = getattr(viewer, "__wrapped__", None)  # a dunder: no private-access warning
        if inner is None or inner is viewer:
            break
        viewer = inner
    return viewer


def on_dock_closed(native: Any, viewer: Any, callback: Callable[[], None]) -> Any:
    """Call ``callback`` (a bound method) once when ``native`` leaves ``viewer``'s window
    (its dock was closed) or is deleted.

    Why: napari's close button does not delete a dock's widget (it only takes it out of
    the window), so ``destroyed`` never fires and a closed dock's job would keep running
    and add layers later.

    The window is the real one behind the dock's proxy of the viewer: through the proxy
    it is a proxy too, never a parent of ``native``, and the dock's close went unseen.

    Hidden docks (tabbed, collapsed) still belong to the window and do not count.
    Only weak references are kept, so the watcher never keeps a closed dock (or the
    viewer) alive. Returns the event filter (parented to ``native``).
    """
    from qtpy.QtCore import QEvent, QObject, QTimer

    state = {"fired": False, "seen": False}
    window = unproxied(viewer).window._qt_window
    window_ref, native_ref = weakref.ref(window), weakref.ref(native)
    method = weakref.WeakMethod(callback)  # type: ignore[arg-type]

    def fire() -> None:
        target = method()
        if not state["fired"] and target is not None:
            state["fired"] = True
            try:
                target()
            except RuntimeError:  # some Qt objects are already gone (the application quits)
                pass

    def belongs() -> bool:
        """Whether ``native`` sits inside the window; False once its Qt objects are deleted."""
        widget, target = native_ref(), window_ref()
        try:
            while widget is not None:
                if widget is target:
                    return True
                widget = widget.parent()
        except RuntimeError:  # a parent's C++ object is gone (the viewer is closing)
            return False
        return False

    def check() -> None:
        inside = belongs()
        state["seen"] = state["seen"] or inside
        if state["seen"] and not inside:
            fire()

    class _Watcher(QObject):
        def eventFilter(self, obj: Any, event: Any) -> bool:  # noqa: N802 (Qt's name)
            kind = event.type()
            if not state["seen"]:  # until it is docked, any event may be the first inside
                state["seen"] = belongs()
            elif kind == QEvent.Type.ParentChange:
                check()  # the new parent is set: a removed dock stops before any callback
            elif kind == QEvent.Type.Hide:
                QTimer.singleShot(0, check)  # an ancestor may be on its way out
            return False

    watcher = _Watcher(native)
    native.installEventFilter(watcher)
    native.destroyed.connect(lambda *_: fire())
    return watcher
