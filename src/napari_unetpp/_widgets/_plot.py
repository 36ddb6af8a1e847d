"""A live plot of a training run: losses (top) and validation score per depth (bottom).

Cheap to update: adding a point only appends to lists and starts a single-shot
timer; the plot is redrawn at most once per ``interval_ms`` (``set_data`` +
``draw_idle``, fixed margins instead of a layout engine), so a training loop that
reports every step never makes the GUI thread spend its time drawing (one draw
costs ~0.1-0.3 s on a small shared CPU).
"""

from __future__ import annotations

from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
from matplotlib.figure import Figure
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
        self.setMinimumHeight(220)
        self._loss_ax = figure.add_subplot(2, 1, 1)
        self._score_ax = figure.add_subplot(2, 1, 2, sharex=self._loss_ax)
        self._score_name = score_name
        self._timer = QTimer(self)
        self._timer.setSingleShot(True)
        self._timer.setInterval(interval_ms)
        self._timer.timeout.connect(self._redraw)
        self.clear()

    def clear(self) -> None:
        """Forget all points (a new run starts)."""
        self.steps: list[int] = []
        self.losses: list[float] = []
        self.val_steps: list[int] = []
        self.val_losses: list[float] = []
        self.scores: dict[int, list[tuple[int, float]]] = {}
        for ax in (self._loss_ax, self._score_ax):
            ax.clear()
            ax.grid(True, alpha=0.3)
        (self._loss_line,) = self._loss_ax.plot([], [], lw=1, label="train loss")
        (self._val_line,) = self._loss_ax.plot([], [], "o-", ms=3, label="val loss")
        self._loss_ax.set_ylabel("loss")
        self._loss_ax.legend(loc="upper right", fontsize="small")
        self._score_ax.set_ylabel(f"val {self._score_name}")
        self._score_ax.set_xlabel("step")
        self._score_lines: dict[int, object] = {}
        self._redraw()

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

    def _redraw(self) -> None:
        self._loss_line.set_data(self.steps, self.losses)
        self._val_line.set_data(self.val_steps, self.val_losses)
        for depth, points in sorted(self.scores.items()):
            line = self._score_lines.get(depth)
            if line is None:
                colour = DEPTH_COLOURS[(depth - 1) % len(DEPTH_COLOURS)]
                (line,) = self._score_ax.plot([], [], "o-", ms=3, color=colour, label=f"L{depth}")
                self._score_lines[depth] = line
                self._score_ax.legend(loc="lower right", fontsize="small", ncol=2)
            steps, values = zip(*points, strict=False)
            line.set_data(steps, values)  # type: ignore[attr-defined]
        for ax in (self._loss_ax, self._score_ax):
            ax.relim()
            ax.autoscale_view()
        self.draw_idle()
