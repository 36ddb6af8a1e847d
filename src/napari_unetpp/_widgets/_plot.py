"""A live plot of a training run: losses (top) and validation score per depth (bottom).

Cheap to update: adding a point only appends to lists and starts a single-shot
timer; the plot is updated at most once per ``interval_ms``. A full draw (axes,
ticks, legends: ~0.1 s on a small CPU, measured as the largest GUI-thread stall
while training) happens only when the axes must grow; otherwise the lines alone
are drawn over a saved background (blitting, ~5 ms). :meth:`TrainingPlot.clear`
takes the run's step count and depths, so the step axis and the legend are final
from the start; the loss axis starts at 0 and only grows (by half again) when a
loss exceeds it. A run needs two or three full draws, not one per new minimum.
"""

from __future__ import annotations

from collections.abc import Iterable

from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from qtpy.QtCore import QTimer

__all__ = ["TrainingPlot"]

#: One colour per depth (L1..L4), the same in every run.
DEPTH_COLOURS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b")


class TrainingPlot(FigureCanvasQTAgg):
    """Training loss, validation loss, and validation score of each depth over steps.

    The recorded values stay readable (``steps``, ``losses``, ``val_steps``,
    ``val_losses``, ``scores``) so tests and widgets can inspect them.
    """

    def __init__(self, interval_ms: int = 1000, score_name: str = "IoU") -> None:
        figure = Figure(figsize=(4, 3.2))
        # fixed margins: a layout engine (tight/constrained) would re-measure every draw
        figure.subplots_adjust(left=0.16, right=0.97, top=0.97, bottom=0.2, hspace=0.12)
        super().__init__(figure)
        # a fixed size: every resize is a full redraw (~0.1 s); 380 px fits the ~420 px
        # dock (its width once swung by ~200 px per progress update: see _train_form)
        self.setFixedSize(380, 240)
        self._loss_ax = figure.add_subplot(2, 1, 1)
        self._score_ax = figure.add_subplot(2, 1, 2, sharex=self._loss_ax)
        self._score_name = score_name
        self._background: object | None = None
        self.full_draws = 0  # how often the whole figure was drawn (the costly path)
        self.mpl_connect("draw_event", self._on_draw)
        self._timer = QTimer(self)
        self._timer.setSingleShot(True)
        self._timer.setInterval(interval_ms)
        self._timer.timeout.connect(self._redraw)
        self.clear()

    def clear(self, total_steps: int | None = None, depths: Iterable[int] = ()) -> None:
        """Forget all points (a new run starts) of ``total_steps`` steps, scoring ``depths``."""
        self.steps: list[int] = []
        self.losses: list[float] = []
        self.val_steps: list[int] = []
        self.val_losses: list[float] = []
        self.scores: dict[int, list[tuple[int, float]]] = {}
        for ax in (self._loss_ax, self._score_ax):
            ax.clear()
            ax.grid(True, alpha=0.3)
        # animated lines are left out of full draws and drawn over the saved background
        (self._loss_line,) = self._loss_ax.plot([], [], lw=1, label="train loss", animated=True)
        (self._val_line,) = self._loss_ax.plot([], [], "o-", ms=3, label="val loss", animated=True)
        self._loss_ax.set_ylabel("loss")
        self._loss_ax.legend(loc="upper right", fontsize="small")
        self._score_ax.set_ylabel(f"val {self._score_name}")
        self._score_ax.set_xlabel("step")
        self._score_ax.set_ylim(0.0, 1.02)  # scores live in 0..1: this axis never grows
        self._loss_ax.set_xlim(0, total_steps or 10)
        self._loss_ax.set_ylim(0.0, 1.0)
        self._score_lines: dict[int, Line2D] = {}
        for depth in depths:  # the legend is drawn once, not at the first validation
            self._score_line(int(depth))
        if self._score_lines:
            self._score_ax.legend(loc="lower right", fontsize="small", ncol=2)
        self._background = None
        self._schedule()  # drawn with the first points: one full draw, not two

    def start(
        self, total_steps: int, depths: Iterable[int] = (), first_loss: float | None = None
    ) -> None:
        """:meth:`clear` for a new run, and draw its empty axes at once.

        Why at once: a full draw takes ~0.1 s of the GUI thread, about twice that once
        the training thread competes for the GIL (issue 16); drawn before the job
        starts, the first points are blitted over it. ``first_loss``: the loss expected
        at the first step, so that the loss axis need not grow (a second full draw) when
        the first point comes.
        """
        self.clear(total_steps, depths)
        if first_loss is not None and first_loss > 0:
            self._loss_ax.set_ylim(0.0, 1.5 * first_loss)
        self._timer.stop()
        self.draw()

    def add_step(self, step: int, loss: float | None) -> None:
        """Record a training loss."""
        if loss is not None:
            self.steps.append(step)
            self.losses.append(float(loss))
            self._schedule()

    def add_validation(self, step: int, val_loss: float | None, scores: dict[int, float]) -> None:
        """Record a validation loss and the score of each depth."""
        if val_loss is not None:
            self.val_steps.append(step)
            self.val_losses.append(float(val_loss))
        for depth, score in scores.items():
            self.scores.setdefault(int(depth), []).append((step, float(score)))
        self._schedule()

    def _schedule(self) -> None:
        if not self._timer.isActive():
            self._timer.start()

    def _lines(self) -> list[Line2D]:
        return [self._loss_line, self._val_line, *self._score_lines.values()]

    def _redraw(self) -> None:
        self._loss_line.set_data(self.steps, self.losses)
        self._val_line.set_data(self.val_steps, self.val_losses)
        new_line = False
        for depth, points in sorted(self.scores.items()):
            new_line = new_line or depth not in self._score_lines
            steps, values = zip(*points, strict=False)
            self._score_line(depth).set_data(steps, values)
        if new_line:
            self._score_ax.legend(loc="lower right", fontsize="small", ncol=2)
        if self._grow_axes() or new_line or self._background is None:
            self.draw_idle()  # the lines are drawn by _on_draw, over the new background
        else:
            self.restore_region(self._background)
            self._draw_lines()

    def _score_line(self, depth: int) -> Line2D:
        """The score line of ``depth`` (made on first use, in that depth's colour)."""
        line = self._score_lines.get(depth)
        if line is None:
            colour = DEPTH_COLOURS[(depth - 1) % len(DEPTH_COLOURS)]
            (line,) = self._score_ax.plot(
                [], [], "o-", ms=3, color=colour, label=f"L{depth}", animated=True
            )
            self._score_lines[depth] = line
        return line

    def _grow_axes(self) -> bool:
        """Widen the axes (with headroom) when the data left them; True if they changed."""
        changed = False
        steps = self.steps + self.val_steps
        if steps and max(steps) > self._loss_ax.get_xlim()[1]:
            self._loss_ax.set_xlim(0, 2 * max(steps))  # shared with the score axis
            changed = True
        losses = self.losses + self.val_losses
        finite = [v for v in losses if v == v and abs(v) != float("inf")]
        if finite and min(finite) >= 0:  # losses: 0 to the largest, with room to spare
            if max(finite) > self._loss_ax.get_ylim()[1]:
                self._loss_ax.set_ylim(0.0, 1.5 * max(finite))
                changed = True
        elif finite:
            low, high = self._loss_ax.get_ylim()
            if min(finite) < low or max(finite) > high:
                span = max(max(finite) - min(finite), 1e-3)
                bottom = max(0.0, min(finite) - 0.1 * span) if min(finite) >= 0 else None
                self._loss_ax.set_ylim(
                    bottom if bottom is not None else min(finite) - 0.1 * span,
                    max(finite) + 0.25 * span,
                )
                changed = True
        return changed

    def _on_draw(self, _event: object) -> None:
        """After a full draw: keep it as the background, then draw the lines on it."""
        self.full_draws += 1
        self._background = self.copy_from_bbox(self.figure.bbox)
        self._draw_lines(blit=False)  # the draw in progress shows them

    def blit(self, bbox: object = None) -> None:
        """Show the updated buffer at the next paint pass, not at once.

        Why: matplotlib's Qt blit calls ``repaint`` (synchronous), and in napari's window
        each immediate repaint flushes the whole window with its OpenGL canvas (~50 ms of
        the GUI thread, measured); ``update`` lets Qt paint it with the dock's other changes.
        """
        self.update()

    def _draw_lines(self, blit: bool = True) -> None:
        for line in self._lines():
            axes = line.axes
            if axes is not None:
                axes.draw_artist(line)
        if blit:
            self.blit(self.figure.bbox)
