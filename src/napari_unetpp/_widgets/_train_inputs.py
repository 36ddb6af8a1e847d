"""The train dock's inputs: which image and labels it trains on, and what they are.

Why apart from the run (:mod:`.train`): choosing the pairs, guessing the label mode
(dense or scribbles) and the target (classes or instances) as the user paints, the
fine-tune defaults of 'Start from', and following the viewer's layers and the trained
models are the form's reactions to the user; the dock adds
the job, its progress and its result. Sub-widgets stay attributes of the form
(:class:`._train_form.TrainForm`, read by :class:`._train_configs.TrainConfigs`), so
tests set them and call the handlers.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
from napari.layers import Image, Labels
from napari.utils.notifications import show_error

from ..config import FINE_TUNE_ITERATIONS
from . import _state
from ._layers import layer_data, made_here
from ._train_configs import TrainConfigs, placement_note
from ._train_form import FINE_TUNE_LR, SCRATCH_ITERATIONS, SCRATCH_LR

if TYPE_CHECKING:
    import napari

    from ..config import DataConfig

#: Labels with more elements are guessed from their middle slice (keeps the GUI snappy).
GUESS_MAX_SIZE = 1 << 24
#: The label-mode guess is refreshed this long after the last brush stroke.
GUESS_DELAY_MS = 500
#: Dense labels with more distinct values than this are guessed to be instance ids (each
#: object painted with its own id): more classes than anyone paints by hand.
INSTANCE_GUESS_VALUES = 16
#: Said with scribbles for a model that learns instances (the shipped nuclei one).
INSTANCE_SCRIBBLES_NOTE = (
    "; for a model that finds objects (Target 'instances') scribbles are its classes: "
    "1 = background, 2 = inside an object, 3 = an object's edge (between touching objects)"
)


class TrainInputs(TrainConfigs):
    """The form plus its reactions: training pairs, label-mode and target guesses,
    following the brush and the viewer's layers, and the defaults of 'Start from'."""

    def __init__(self, napari_viewer: napari.viewer.Viewer) -> None:
        super().__init__(napari_viewer)
        self._pairs: list[tuple[Image, Labels]] = []
        self._mode_from_user = False
        self._target_from_user = False
        self._labels_from_user = False  # the user picked the Labels box's layer
        self._painted: Labels | None = None  # the layer whose paint events we follow
        self._connect_inputs()

    def _connect_inputs(self) -> None:
        from qtpy.QtCore import QTimer

        self._guess_timer = QTimer()
        self._guess_timer.setSingleShot(True)
        self._guess_timer.setInterval(GUESS_DELAY_MS)
        self._guess_timer.timeout.connect(self._on_pair_changed)
        self._image.changed.connect(self._on_pair_changed)
        self._labels_box.changed.connect(self._on_pair_changed)
        self._labels_box.native.activated.connect(self._on_user_labels)  # user choices only
        self._label_mode.native.activated.connect(self._on_user_mode)  # user choices only
        self._target.native.activated.connect(self._on_user_target)
        self._channel_axis.changed.connect(self._on_axes_changed)
        self._dims.changed.connect(self._on_axes_changed)
        self._add_pair.changed.connect(self._on_add_pair)
        self._clear_pairs.changed.connect(self._on_clear_pairs)
        self._start_from.changed.connect(self._on_start_from)
        self._custom_widths.changed.connect(self._grey_widths)
        self._checkpoint_file.changed.connect(self._inherit_target)
        # outside signals: disconnected when the dock goes (:meth:`_closed`), so a closed
        # widget that Python has not collected yet is never called back (its Qt objects
        # are deleted)
        for event in ("inserted", "removed", "reordered"):
            getattr(self._viewer.layers.events, event).connect(self._on_layers_changed)
        _state.models_changed.connect(self._on_models_changed)

    def _closed(self) -> None:
        """The dock was closed (or deleted): no more layer, model or paint events, no
        pending guess (the dock adds stopping its training)."""
        _state.models_changed.disconnect(self._on_models_changed)
        for event in ("inserted", "removed", "reordered"):
            getattr(self._viewer.layers.events, event).disconnect(self._on_layers_changed)
        self._follow_painting(None)
        self._guess_timer.stop()

    def _on_layers_changed(self, event: Any = None) -> None:
        """Layers added, removed or moved: the boxes list them; a new Labels layer of the
        user's is chosen, a removed layer leaves the pairs."""
        try:
            self.reset_choices()
        except RuntimeError:  # its Qt widgets were deleted before the dock said so
            self._closed()
            return
        if getattr(event, "type", "") == "inserted":
            self._take_new_labels(event.value)
        elif getattr(event, "type", "") == "removed":
            self._drop_pairs_of(event.value)

    def _on_models_changed(self) -> None:
        try:
            self._start_from.reset_choices()
        except RuntimeError:
            self._closed()

    def _take_new_labels(self, layer: Any) -> None:
        """A Labels layer the user adds replaces the plugin's own labels in the Labels box.

        Why: a dock opened after a Segment run holds ``<image> UNet++ labels`` (the only
        Labels layer then); the user's new layer, painted in the 'label here next'
        blocks, was listed but not chosen, and Start fine-tuned the model on its own
        output. A layer the user picked in the box stays picked.
        """
        chosen = self._labels_box.value
        if (
            isinstance(layer, Labels)
            and not made_here(layer)
            and not self._labels_from_user
            and (chosen is None or made_here(chosen))
        ):
            self._labels_box.value = layer

    def _on_user_labels(self, _index: int) -> None:
        self._labels_from_user = True

    def _follow_painting(self, labels: Labels | None) -> None:
        """Refresh the label-mode guess a moment after each brush stroke on ``labels``."""
        if self._painted is labels:
            return
        if self._painted is not None:
            self._painted.events.paint.disconnect(self._on_paint)
        self._painted = labels
        if labels is not None:
            labels.events.paint.connect(self._on_paint)

    def _on_paint(self, _event: Any = None) -> None:
        self._guess_timer.start()

    def _on_pair_changed(self, _value: Any = None) -> None:
        image, labels = self._image.value, self._labels_box.value
        self._pair_info.value = ""
        self._follow_painting(labels)
        if image is None or labels is None:
            return
        self._fit_axes(image, labels)
        try:
            self._check_pair(image, labels)
        except ValueError as exc:
            self._pair_info.value = f"⚠ {exc}"
            if not self._mode_from_user:  # another layer's guess says nothing of this one
                self._label_reason.value = ""
            return
        self._pair_info.value = placement_note(image, labels)
        self._guess_label_mode(labels)

    def _on_axes_changed(self, _value: Any = None) -> None:
        """Channel axis or 'Stacks as' changed: say at once whether the pair fits them."""
        image, labels = self._image.value, self._labels_box.value
        if image is None or labels is None:
            return
        try:
            self._check_pair(image, labels)
        except ValueError as exc:
            self._pair_info.value = f"⚠ {exc}"
        else:
            self._pair_info.value = ""

    def _on_user_mode(self, _index: int) -> None:
        self._mode_from_user = True
        self._label_reason.value = f"label mode set to {self._label_mode.value} by you"

    def _on_user_target(self, _index: int) -> None:
        self._target_from_user = True

    def _guess_label_mode(self, labels: Labels) -> None:
        from ..labels import guess_label_mode

        if self._mode_from_user:
            return
        data = layer_data(labels)
        if data.size > GUESS_MAX_SIZE and data.ndim > 2:
            data = data[data.shape[0] // 2]
        data = np.asarray(data)
        try:
            mode, why = guess_label_mode(data)
        except ValueError as exc:
            self._label_reason.value = str(exc)
            return
        self._label_mode.value = mode
        self._label_reason.value = f"guessed {mode}: {why}{self._guess_target(data, mode)}"

    def _guess_target(self, data: np.ndarray, mode: str) -> str:
        """Instances for dense labels of many ids, unless the user or the model to fine-tune
        says otherwise; returns the reason to show (empty when nothing was guessed)."""
        if self._target_from_user or self._start_from.value != "scratch":
            return INSTANCE_SCRIBBLES_NOTE if self._instance_scribbles(mode) else ""
        values = int(np.unique(data[data > 0]).size)
        instance = mode == "dense" and values > INSTANCE_GUESS_VALUES
        self._target.value = "instance" if instance else "semantic"
        return f"; {values} label values: guessed instances (one id per object)" if instance else ""

    def _instance_scribbles(self, mode: str) -> bool:
        return mode == "sparse" and self._target.value == "instance"

    def _on_add_pair(self, _value: Any = None) -> None:
        image, labels = self._image.value, self._labels_box.value
        try:
            if image is None or labels is None:
                raise ValueError("choose an Image layer and a Labels layer to add a pair")
            self._check_pair(image, labels)
        except ValueError as exc:
            show_error(str(exc))
            return
        if (image, labels) not in self._pairs:  # twice would train it twice as often
            self._pairs.append((image, labels))
        self._show_pairs()

    def _on_clear_pairs(self, _value: Any = None) -> None:
        self._pairs.clear()
        self._show_pairs()

    def _drop_pairs_of(self, layer: Any) -> None:
        """A layer removed from the viewer leaves the pairs (Start trained on it unseen)."""
        kept = [pair for pair in self._pairs if layer not in pair]
        if len(kept) != len(self._pairs):
            self._pairs[:] = kept
            self._show_pairs()

    def _show_pairs(self) -> None:
        names = ", ".join(f"{i.name} + {lab.name}" for i, lab in self._pairs)
        self._pair_list.value = f"training on: {names or 'the selected pair'}"

    def _training_pairs(self) -> list[tuple[Image, Labels]]:
        if self._pairs:
            return list(self._pairs)
        image, labels = self._image.value, self._labels_box.value
        if image is None or labels is None:
            raise ValueError("choose an Image layer and a Labels layer (paint labels first)")
        self._check_pair(image, labels)
        self._guess_label_mode(labels)
        return [(image, labels)]

    def _on_start_from(self, value: str) -> None:
        self._checkpoint_file.visible = value == "file"
        scratch = value == "scratch"
        for widget in (self._depth, self._custom_widths):
            widget.enabled = scratch  # a fine-tuned model keeps its architecture
        self._grey_widths()
        # fine-tuning: small steps, BatchNorm statistics kept (issue 16: a good model got worse)
        self._lr.value = SCRATCH_LR if scratch else FINE_TUNE_LR
        self._iterations.value = SCRATCH_ITERATIONS if scratch else FINE_TUNE_ITERATIONS
        self._freeze_norm.value = not scratch
        self._preserve.value = not scratch
        self._preview.value = not scratch
        self._inherit_target()

    def _inherit_target(self, _value: Any = None) -> None:
        """A fine-tune learns what its model learnt (an instance model stays one), as the
        CLI's ``--from`` does; the user may still change it."""
        try:
            _, base = self._initial()
        except (ValueError, OSError, KeyError):  # no checkpoint chosen yet
            return
        if base is not None:
            self._target.value = base.data.target
            reason = str(self._label_reason.value)
            if self._instance_scribbles(self._label_mode.value) and not reason.endswith(
                INSTANCE_SCRIBBLES_NOTE
            ):
                self._label_reason.value = reason + INSTANCE_SCRIBBLES_NOTE

    def _class_mapping(
        self, pairs: list[tuple[Image, Labels]], data: DataConfig, classes: int
    ) -> tuple[str | None, str | None]:
        """For a fine-tune: the warning to give at Start when its labels replace the model's
        heads or are not the model's own values, else which label value trains which of its
        classes (``train --from`` says the same: ``finetune.class_mapping``)."""
        from ..finetune import class_mapping

        _, base = self._initial()
        if base is None:
            return None, None
        return class_mapping([layer_data(lab) for _, lab in pairs], base.model, data, classes)
