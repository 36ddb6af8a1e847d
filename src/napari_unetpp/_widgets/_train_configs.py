"""The Train dock's values as configs, and the checks of what it trains on.

Why apart from the form (:mod:`._train_form`, its widgets): how the fields become
``ModelConfig`` / ``TrainConfig`` / ``DataConfig`` (and the checkpoint to start from)
is one mapping, and whether an image and its labels fit the fields (shapes, channel
axis, 'Stacks as', the model's channels, pixel sizes) is what that mapping needs and what
Start refuses, in the dock's words (its fields, not config names).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
from napari.layers import Image, Labels

from ..locate import is_zoo, locate
from . import _state
from ._layers import layer_data
from ._paths import chosen_path
from ._pixel_size import layer_pixel_size
from ._train_form import TrainForm

if TYPE_CHECKING:
    from ..config import DataConfig, ModelConfig, TrainConfig

#: An axis longer than this is never guessed to hold channels: 20 planes of a stack with
#: one-plane labels trained a 20-channel model without a word (QA session 13).
MAX_GUESSED_CHANNELS = 4


class TrainConfigs(TrainForm):
    """The form, read: pair checks and guesses, the starting model, the configs."""

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
            widths = tuple(int(t) for t in text) if text else self._widths.value
        except ValueError:
            raise ValueError(
                f"custom widths {self._custom_widths.value!r}: give integers, e.g. 8 16 32 64 128"
            ) from None
        depth = self._depth.value
        if text and len(widths) != depth + 1:  # else "ModelConfig: depth 4 needs 5 widths"
            other = f", or set Depth to {len(widths) - 1}" if 2 <= len(widths) <= 5 else ""
            raise ValueError(
                f"custom widths {self._custom_widths.value!r}: {len(widths)} width(s), but "
                f"Depth {depth} needs {depth + 1} (one per level): give {depth + 1} "
                f"widths{other}"
            )
        return widths

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
        keep = bool(self._freeze_norm.value)
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
            # ticked for a fine-tune: the engine's default (as ``train --from``), kept
            freeze_norm=None if self._freeze_norm.value and initial is not None else keep,
            # ticked: the engine's default weight (as ``train --from``), else off
            preserve_weight=None if self._preserve.value and initial is not None else 0.0,
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


def pair_pixel_sizes(pairs: list[tuple[Any, Any]]) -> list[tuple[tuple[float, ...], str] | None]:
    """Each pair's image pixel size and unit, from its layer (the reader's, or a scale with
    real units; see :func:`._pixel_size.layer_pixel_size`), or None where it is unknown."""
    sizes: list[tuple[tuple[float, ...], str] | None] = []
    for image, _ in pairs:
        size, unit = layer_pixel_size(image)
        sizes.append((tuple(size), unit) if size and unit else None)
    return sizes


def at_pixel_size(
    model: ModelConfig, sizes: list[tuple[tuple[float, ...], str] | None]
) -> ModelConfig:
    """The model config with the pixel size the run trains at (a new model takes the
    images'; a fine-tuned one keeps its own): recorded in run.json and the checkpoint."""
    from ..scale import training_pixel_size

    size, unit = training_pixel_size(sizes, model.pixel_size, model.pixel_unit, model.spatial_dims)
    return model.replace(pixel_size=size, pixel_unit=unit) if size else model


def check_channels(pairs: list[tuple[Any, Any]], model: ModelConfig, data: DataConfig) -> None:
    """Refuse at Start images whose channels the model (a fine-tuned one's) cannot take; it
    failed inside the job, in the engine's words, after making a run folder."""
    for image, _ in pairs:
        shape = layer_data(image).shape
        channels = 1 if data.channel_axis is None else shape[data.channel_axis]
        if channels != model.in_channels:
            raise ValueError(
                f"the model takes {model.in_channels} input channel(s) but '{image.name}' "
                f"{shape} has {channels} with its 'Channel axis' choice: choose that axis, an "
                f"image of {model.in_channels} channel(s), or start from scratch"
            )


def rgb_as_grey(pairs: list[tuple[Any, Any]], model: ModelConfig, data: DataConfig) -> bool:
    """Whether the training images are RGB layers for a one-channel model (a fine-tune of
    the shipped nuclei model on H&E, say): then they are trained on as their luminance, as
    the Segment dock and the CLI see them (the channel axis would be a dead end)."""
    return (
        model.in_channels == 1
        and data.channel_axis is not None
        and all(image.rgb for image, _ in pairs)
    )


def placement_note(image: Image, labels: Labels) -> str:
    """A note when the labels are shown at another scale or place than the image (a label
    file without the image's pixel size): training pairs their arrays pixel by pixel."""
    n = labels.ndim
    same = np.allclose(image.scale[-n:], labels.scale) and np.allclose(
        image.translate[-n:], labels.translate
    )
    return (
        ""
        if same
        else "note: the labels are shown at another scale or position than the image; "
        "training pairs them pixel by pixel (as painted into the labels' array)"
    )
