"""The train dock's form: its widgets, grouped in sections, and the configs they say.

Why apart from the dock's behaviour (:mod:`.train`): what the user can set, and how
those values become ``ModelConfig`` / ``TrainConfig`` / ``DataConfig``, is one
mapping; the dock adds the events, the label-mode guess and the run. Sub-widgets
stay attributes (``w._lr``, ``w._start_from``) so tests set them and call handlers.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
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

from ..config import FINE_TUNE_LEARNING_RATE
from ..locate import is_zoo, locate
from . import _state
from ._layers import layer_choices, layer_data
from ._paths import chosen_path
from ._ui import scroll_inside, share_dock_area, wrapped

if TYPE_CHECKING:
    import napari

    from ..config import DataConfig, ModelConfig, TrainConfig
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
#: An axis longer than this is never guessed to hold channels: 20 planes of a stack with
#: one-plane labels trained a 20-channel model without a word (QA session 13).
MAX_GUESSED_CHANNELS = 4
#: Defaults when starting from a trained model: small steps that keep what it knows.
FINE_TUNE_LR, FINE_TUNE_ITERATIONS = FINE_TUNE_LEARNING_RATE, 200
SCRATCH_LR, SCRATCH_ITERATIONS = 1e-3, 2000


class TrainForm(Container):
    """The train dock's widgets (data, model, advanced, run sections) and their configs."""

    def __init__(self, napari_viewer: napari.viewer.Viewer) -> None:
        # not magicgui's scrollable: napari docks ``.native``, the content *inside* magicgui's
        # scroll area, and the orphaned scroll area kept resizing it to its own width
        # (624 px) on every layout change, so the dock swung 405 <-> 624 px and relaid out
        # twice per status update (issue 16); _ui.scroll_inside scrolls inside ``.native``
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
        self._patch = SpinBox(label="Patch size", value=128, min=16, max=1024, step=16)
        self._batch = SpinBox(label="Batch size", value=4, min=1, max=256)
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
        self._start, self._stop = PushButton(text="Start"), PushButton(text="Stop", enabled=False)
        self._progress = ProgressBar(label="Progress", value=0, min=0, max=100)
        self._status = wrapped()
        buttons = Container(widgets=[self._start, self._stop], layout="horizontal", labels=False)
        self.extend([self._output, self._preview, buttons, self._progress, self._status])
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

    # ------------------------------------------------------------------ configs

    def _channel_axis_value(self) -> int | None:
        value = self._channel_axis.value
        return None if value == "none" else int(value)

    def _check_pair(self, image: Image, labels: Labels) -> None:
        """What Start needs of a pair, in the dock's words (its fields, not config names)."""
        from ..normalization import check_pair

        shape, target = layer_data(image).shape, layer_data(labels).shape
        axis = self._channel_axis_value()
        if len(shape) == len(target) + 1 and not _axis_fits(
            shape, target, self._channel_axis.value
        ):
            planes = [v for v in ("0", "-1") if _axis_fits(shape, target, v)]
            if self._channel_axis.value == "none" and planes and not image.rgb:
                count = shape[int(planes[0])]
                raise ValueError(
                    f"'{image.name}' {shape} holds {count} planes and the labels "
                    f"'{labels.name}' {target} one: paint on a Labels layer of the image's "
                    "shape (layer list: New labels layer), or, if the planes are channels "
                    "of one image, choose their axis in 'Channel axis'"
                )
            raise ValueError(
                f"image shape {shape} and labels shape {target} do not match with Channel axis "
                f"'{self._channel_axis.value}': choose the image's channel axis in 'Channel axis'"
            )
        check_pair(layer_data(image), layer_data(labels), axis)
        if self._dims.value == 3 and len(shape) - (axis is not None) < 3:
            raise ValueError(
                f"'{image.name}' is a single plane {shape}: 'Stacks as: 3D' needs a stack "
                "(Z, Y, X); choose 'Stacks as: 2D slice-wise'"
            )

    def _fit_axes(self, image: Image, labels: Labels) -> None:
        """Channel axis and 'Stacks as' for a newly chosen pair: last for RGB, none when the
        image has the labels' axes, else the one axis whose removal leaves the labels' shape
        (the user's choice stays when it fits); 2D for a single plane (no Z for 3D).
        An axis of more than :data:`MAX_GUESSED_CHANNELS` is a stack's, and no fit leaves
        none (a grey image kept an RGB one's "last", and the shape error named it)."""
        shape, target = layer_data(image).shape, layer_data(labels).shape

        def guessable(axis: str) -> bool:
            return _axis_fits(shape, target, axis) and (
                axis == "none" or shape[int(axis)] <= MAX_GUESSED_CHANNELS
            )

        axis = self._channel_axis.value
        if image.rgb:
            axis = "-1"  # (an RGB layer chosen before had set "last" for a grey one too)
        elif len(shape) == len(target) or not guessable(axis):
            fits = [v for v in ("none", "0", "1", "-1") if guessable(v)]
            axis = fits[0] if fits else "none"
        self._channel_axis.value = axis
        if len(shape) - (axis != "none") < 3:
            self._dims.value = 2

    def _initial(self) -> tuple[str | None, Any]:
        """The checkpoint to start from (path or zoo folder) and its info, or (None, None)."""
        from ..checkpoint import read_info

        value = self._start_from.value
        if value == "scratch":
            return None, None
        if is_zoo(value):
            path = str(locate(value).path)
        elif value.startswith("trained:"):
            path = str(_state.registered_models()[value[8:]])
        else:
            path = str(chosen_path(self._checkpoint_file.value, "checkpoint file"))
        return path, read_info(path)

    def _widths_value(self) -> tuple[int, ...]:
        text = self._custom_widths.value.replace(",", " ").split()
        try:
            return tuple(int(t) for t in text) if text else self._widths.value
        except ValueError:
            raise ValueError(
                f"custom widths {self._custom_widths.value!r}: give integers, e.g. 8 16 32 64 128"
            ) from None

    def _configs(
        self, pairs: list[tuple[Image, Labels]]
    ) -> tuple[ModelConfig, TrainConfig, DataConfig, str | None]:
        from ..config import DataConfig, ModelConfig, NormalizationConfig, TrainConfig
        from ..finetune import kept_class_values
        from ..labels import num_output_channels

        initial, base = self._initial()
        norm = NormalizationConfig(
            self._normalization.value, self._norm_low.value, self._norm_high.value
        )
        data = DataConfig(
            normalization=base.data.normalization if base else norm,
            label_mode=self._label_mode.value,
            target=self._target.value,
            channel_axis=self._channel_axis_value(),
        )
        if base is not None:  # scribbles of some of its classes keep its heads
            kept = kept_class_values([layer_data(lab) for _, lab in pairs], base.model, data)
            data = data.replace(class_values=kept) if kept else data
        classes = num_output_channels(data, [layer_data(lab) for _, lab in pairs])
        axis = data.channel_axis
        channels = 1 if axis is None else layer_data(pairs[0][0]).shape[axis]
        if base is None:
            model = ModelConfig(
                in_channels=channels,
                num_classes=classes,
                widths=self._widths_value(),
                depth=self._depth.value,
                spatial_dims=self._dims.value,
            )
        else:  # the same classes keep their names (as the CLI); other classes: new heads
            names = base.model.class_names if classes == base.model.num_classes else ()
            model = base.model.replace(num_classes=classes, class_names=names)
        dims = model.spatial_dims
        patch = (self._patch.value,) * 2
        train = TrainConfig(
            iterations=self._iterations.value,
            batch_size=self._batch.value,
            patch_size=patch if dims == 2 else (self._patch_z.value, *patch),
            learning_rate=self._lr.value,
            validate_every=min(self._validate_every.value, self._iterations.value),
            validation_fraction=self._val_fraction.value,
            augment=self._augment.value,
            elastic=self._elastic.value,
            device=self._device.value,
            mixed_precision=self._mixed_precision.value,
            seed=self._seed.value,
            freeze_encoder=self._freeze_encoder.value,
            freeze_norm=self._freeze_norm.value,
            preserve_weight=1.0 if self._preserve.value and initial is not None else 0.0,
        )
        return model, train, data, initial


def _axis_fits(shape: tuple[int, ...], target: tuple[int, ...], axis: str) -> bool:
    """Whether ``shape`` less the channel axis ``axis`` (a Channel axis value) is ``target``."""
    if axis == "none":
        return tuple(shape) == tuple(target)
    index = int(axis)
    if not -len(shape) <= index < len(shape):
        return False
    return tuple(np.delete(np.asarray(shape), index)) == tuple(target)


def _import_plot() -> Any:
    """The live plot's module (it imports matplotlib: ~1 s), for a thread to import."""
    from . import _plot

    return _plot
