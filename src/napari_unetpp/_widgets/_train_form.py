"""The train dock's form: its widgets, grouped in sections (data, model, advanced, run).

Why apart from the dock's behaviour (:mod:`.train`): what the user can set is laid out
here once; how those values become ``ModelConfig`` / ``TrainConfig`` / ``DataConfig``
is :class:`._train_configs.TrainConfigs`, and the dock adds the events, the label-mode
guess and the run. Sub-widgets stay attributes (``w._lr``, ``w._start_from``) so tests
set them and call handlers.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from magicgui.types import FileDialogMode
from magicgui.widgets import (
    CheckBox,
    ComboBox,
    Container,
    FileEdit,
    FloatSpinBox,
    LineEdit,
    ProgressBar,
    PushButton,
    SpinBox,
    Widget,
)
from napari.layers import Image, Labels

from ..config import FINE_TUNE_BATCH_SIZE, FINE_TUNE_LEARNING_RATE, FINE_TUNE_PATCH
from . import _state
from ._dock import scroll_inside, share_dock_area
from ._layers import layer_choices
from ._ui import wrapped

if TYPE_CHECKING:
    import napari

    from ._plot import TrainingPlot

WIDTH_PRESETS = {
    "fast CPU (16..256)": (16, 32, 64, 128, 256),
    "tiny (8..128)": (8, 16, 32, 64, 128),
    "paper (32..512)": (32, 64, 128, 256, 512),
}
CHANNEL_AXES = [
    ("none (grey)", "none"),
    ("last (RGB / YXC)", "-1"),
    ("axis 0", "0"),
    ("axis 1", "1"),
]
DEFAULT_OUTPUT = Path.home() / "napari-unetpp" / "runs"
#: Defaults when starting from a trained model: small steps that keep what it knows.
FINE_TUNE_LR = FINE_TUNE_LEARNING_RATE
SCRATCH_LR, SCRATCH_ITERATIONS = 1e-3, 2000


class TrainForm(Container):
    """The train dock's widgets (data, model, advanced, run sections)."""

    def __init__(self, napari_viewer: napari.viewer.Viewer) -> None:
        # not magicgui's scrollable: napari docks ``.native``, the content *inside* magicgui's
        # scroll area, and the orphaned scroll area kept resizing it to its own width
        # (624 px) on every layout change, so the dock swung 405 <-> 624 px and relaid out
        # twice per status update (issue 16); _dock.scroll_inside scrolls inside ``.native``
        super().__init__()
        self._viewer = napari_viewer
        self._build_data()
        self._build_model()
        self._build_advanced()
        self._build_run()
        self._rows = scroll_inside(self)  # fits a laptop screen, and beside the Segment dock
        share_dock_area(self.native)  # a tab beside the other UNet++ dock, not one row

    # ------------------------------------------------------------------ layout

    def _build_data(self) -> None:
        # not "_labels": that is magicgui Container's "show labels" flag (issue 16)
        self._image = ComboBox(label="Image", choices=layer_choices(self._viewer, Image))
        self._labels_box = ComboBox(label="Labels", choices=layer_choices(self._viewer, Labels))
        self._pair_info = wrapped()
        self._add_pair, self._clear_pairs = PushButton(text="Add pair"), PushButton(text="Clear")
        self._pair_list = wrapped("training on: the selected pair")
        self._label_mode = ComboBox(label="Label mode", choices=["dense", "sparse"])
        self._label_reason = wrapped()
        self._target = ComboBox(
            label="Target",
            choices=[("semantic (classes)", "semantic"), ("instances (boundaries)", "instance")],
        )
        self._dims = ComboBox(label="Stacks as", choices=[("2D slice-wise", 2), ("3D", 3)])
        self._channel_axis = ComboBox(label="Channel axis", choices=CHANNEL_AXES)
        pairs = Container(
            widgets=[self._add_pair, self._clear_pairs], layout="horizontal", labels=False
        )
        self.extend(
            [
                self._image,
                self._labels_box,
                self._pair_info,
                pairs,
                self._pair_list,
                self._label_mode,
                self._label_reason,
                self._target,
                self._dims,
                self._channel_axis,
            ]
        )

    def _build_model(self) -> None:
        self._start_from = ComboBox(label="Start from", choices=self._start_choices)
        self._checkpoint_file = FileEdit(
            label="Checkpoint",
            mode=FileDialogMode.EXISTING_FILE,
            filter="*.json *.zip",
            visible=False,
        )
        self._widths = ComboBox(label="Widths", choices=list(WIDTH_PRESETS.items()))
        self._depth = SpinBox(label="Depth", value=4, min=1, max=4)
        self._iterations = SpinBox(label="Iterations", value=2000, min=1, max=1_000_000, step=100)
        # a fine-tune's (and ``train --from``'s) batch and patch, and a CPU's from scratch
        self._patch = SpinBox(label="Patch size", value=FINE_TUNE_PATCH, min=16, max=1024, step=16)
        self._batch = SpinBox(label="Batch size", value=FINE_TUNE_BATCH_SIZE, min=1, max=256)
        self._lr = FloatSpinBox(
            label="Learning rate", value=SCRATCH_LR, min=1e-6, max=1.0, step=1e-5
        )
        self._lr.native.setDecimals(6)
        self._device = ComboBox(label="Device", choices=["auto", "cuda", "mps", "cpu"])
        self.extend(
            [
                self._start_from,
                self._checkpoint_file,
                self._widths,
                self._depth,
                self._iterations,
                self._patch,
                self._batch,
                self._lr,
                self._device,
            ]
        )

    def _build_advanced(self) -> None:
        self._show_advanced = CheckBox(text="Advanced options", value=False)
        self._custom_widths = LineEdit(label="Custom widths", value="", tooltip="e.g. 8 16 32")
        self._patch_z = SpinBox(label="Patch depth (3D)", value=16, min=4, max=512)
        self._validate_every = SpinBox(label="Validate every", value=100, min=1, max=100_000)
        self._val_fraction = FloatSpinBox(
            label="Validation part", value=0.2, min=0, max=0.9, step=0.05
        )
        self._augment = CheckBox(text="Augment", value=True)
        self._elastic = CheckBox(text="Elastic deformation", value=False)
        self._normalization = ComboBox(
            label="Normalisation", choices=["percentile", "window", "none"]
        )
        self._norm_low = FloatSpinBox(label="low", value=1.0, min=-1e6, max=1e6)
        self._norm_high = FloatSpinBox(label="high", value=99.8, min=-1e6, max=1e6)
        self._freeze_encoder = CheckBox(text="Freeze encoder (fine-tuning)", value=False)
        self._freeze_norm = CheckBox(text="Keep BatchNorm statistics (fine-tuning)", value=False)
        self._preserve = CheckBox(
            text="Keep unpainted predictions (fine-tuning)",
            value=False,
            tooltip="Where you painted nothing, the model is held to its own starting "
            "prediction, so a few strokes correct it without changing the rest",
        )
        self._mixed_precision = CheckBox(
            text="Mixed precision (GPU; CPU with bf16)",
            value=True,
            tooltip="bf16/fp16 on a CUDA GPU, bf16 on a CPU with bf16 instructions "
            "(AVX512-BF16, AMX): about 2x faster, the same scores; off: float32",
        )
        self._seed = SpinBox(label="Seed", value=0, min=0, max=2**31 - 1)
        advanced: list[Widget] = [
            self._custom_widths,
            self._patch_z,
            self._validate_every,
            self._val_fraction,
            self._augment,
            self._elastic,
            self._normalization,
            self._norm_low,
            self._norm_high,
            self._freeze_encoder,
            self._freeze_norm,
            self._preserve,
            self._mixed_precision,
            self._seed,
        ]
        # rows of this form, not a nested Container: that one sat indented by this form's
        # label column, with its own beside it, and was ~60 px wider than the dock (clipped
        # at 434 px: issue 16); shown and hidden together by 'Advanced options'
        self._advanced = tuple(advanced)
        for widget in advanced:
            widget.visible = False
        self.extend([self._show_advanced, *advanced])

    def _on_show_advanced(self, shown: bool) -> None:
        for widget in self._advanced:
            widget.visible = shown

    def _grey_widths(self, _value: Any = None) -> None:
        """'Widths' greyed (and its tooltip says why) while 'Custom widths' overrides it
        or a started-from model keeps its own (issue 16: it showed a preset not used)."""
        custom = bool(self._custom_widths.value.strip())
        self._widths.enabled = self._start_from.value == "scratch" and not custom
        self._widths.tooltip = "overridden by Custom widths (Advanced options)" if custom else ""

    def _build_run(self) -> None:
        self._output = FileEdit(
            label="Output folder", mode=FileDialogMode.EXISTING_DIRECTORY, value=DEFAULT_OUTPUT
        )
        self._preview = CheckBox(text="Preview the slice shown (before/after)", value=False)
        self._train_anyway = CheckBox(
            text="Train anyway (despite a label warning)",
            value=False,
            tooltip="A fine-tune whose labels would make the model worse (values not its "
            "own, strokes wider than its objects, dense labels that unteach a class) stops "
            "before it starts and says why; tick this to train on them all the same",
        )
        self._start, self._stop = PushButton(text="Start"), PushButton(text="Stop", enabled=False)
        self._progress = ProgressBar(label="Progress", value=0, min=0, max=100)
        self._status = wrapped()
        buttons = Container(widgets=[self._start, self._stop], layout="horizontal", labels=False)
        self.extend(
            [self._output, self._preview, self._train_anyway, buttons, self._progress]
            + [self._status]
        )
        self._live_plot: TrainingPlot | None = None
        # the plot's matplotlib import froze the GUI thread 1.1 s at the first dock open:
        # a thread imports it, then the plot is made here (or at first use, if sooner)
        from . import _runner
        from ._workers import in_background

        in_background(_import_plot, self._plot_ready, _runner.report_error, _runner.RUN_INLINE)

    def _plot_ready(self, _module: Any = None) -> None:
        try:
            self._plot  # noqa: B018 (made on first access)
        except RuntimeError:  # the dock was closed (its Qt widgets deleted) meanwhile
            pass

    @property
    def _plot(self) -> TrainingPlot:
        """The live plot of the run (losses, validation scores), made on first use."""
        if self._live_plot is None:
            from ._plot import TrainingPlot

            self._live_plot = TrainingPlot()
            self._live_plot.setMinimumWidth(200)
            self._rows.layout().addWidget(self._live_plot)  # scrolls with the rows
        return self._live_plot

    def _start_choices(self, _w: Any = None) -> list[tuple[str, str]]:
        from ..zoo import available_models

        choices = [("scratch", "scratch")]
        choices += [(f"shipped: {e.name}", e.spec) for e in available_models()]
        choices += [(f"trained: {n}", f"trained:{n}") for n in _state.registered_models()]
        return choices + [("checkpoint file...", "file")]


def _import_plot() -> Any:
    """The live plot's module (it imports matplotlib: ~1 s), for a thread to import."""
    from . import _plot

    return _plot
