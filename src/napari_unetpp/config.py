"""Configuration dataclasses, one per job, serialised into every checkpoint.

Each config validates itself on construction (so a bad value fails where it was
written, with a message that says how to fix it) and round-trips through plain
JSON-able dicts (``to_dict`` / ``from_dict``), which is what ``config.json`` in a
checkpoint and the ``run.json`` beside every widget run hold. The bounds and the
checks themselves live in :mod:`limits`.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

from .limits import (
    MAX_BATCH_VOXELS,
    MAX_CHANNELS,
    MAX_CLASSES,
    MAX_DEPTH,
    MAX_ITERATIONS,
    MAX_PARAMETERS,
    MAX_PATCH,
    MAX_WIDTH,
    as_int,
    as_ints,
    check_choice,
    check_model_scale,
    check_positive,
    check_predict_scale,
    estimate_parameters,
)

NormName = Literal["batch", "instance", "group"]
LabelMode = Literal["dense", "sparse"]
TargetMode = Literal["semantic", "instance"]
NormalizationMode = Literal["percentile", "window", "none"]
DeviceName = Literal["auto", "cuda", "mps", "cpu"]

#: Learning rate of a fine-tune when none is given (CLI ``--from`` and the Train dock): 10x
#: below a from-scratch run, so a few scribbles adapt a good model instead of overwriting it.
FINE_TUNE_LEARNING_RATE = 1e-4
#: Steps of a fine-tune when none are given: enough to correct a good model, too few to
#: overwrite it (the EM model on thin strokes: unseen-slice IoU 0.725 -> 0.736).
FINE_TUNE_ITERATIONS = 200
#: Batch and in-plane patch of a fine-tune when none are given (a CPU's: the dock's own).
FINE_TUNE_BATCH_SIZE, FINE_TUNE_PATCH = 4, 128

#: Value used in integer target maps for pixels that the loss must ignore.
IGNORE_INDEX = -1

_C = TypeVar("_C", bound="_Config")


class _Config:
    """Shared ``to_dict`` / ``from_dict`` for the config dataclasses."""

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            value = getattr(self, f.name)
            if isinstance(value, _Config):
                value = value.to_dict()
            elif isinstance(value, tuple):
                value = list(value)
            out[f.name] = value
        return out

    @classmethod
    def from_dict(cls: type[_C], data: dict[str, Any]) -> _C:
        """Build from a dict; unknown keys are an error (they mean a typo or a newer file)."""
        names = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        unknown = set(data) - set(names)
        if unknown:
            raise ValueError(
                f"{cls.__name__}: unknown field(s) {sorted(unknown)}; "
                f"known fields are {sorted(names)}"
            )
        kwargs: dict[str, Any] = {}
        for key, value in data.items():
            sub = _NESTED.get((cls.__name__, key))
            if sub is not None and isinstance(value, dict):
                value = sub.from_dict(value)
            elif isinstance(value, list):
                value = tuple(value)
            kwargs[key] = value
        return cls(**kwargs)

    def replace(self: _C, **changes: Any) -> _C:
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)  # type: ignore[type-var]

    def _plain_numbers(self) -> None:
        """numpy scalars (``np.float32``, ``np.int64``, ``np.bool_``) as Python's, in place.

        Why: a value computed with numpy (a measured diameter, a layer's scale) is a number
        to a Python user, but the checks test Python types and ``to_dict`` must give JSON:
        ``PredictConfig(rescale=np.float32(0.5))`` was refused as "must be a number".
        """
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            setattr(self, f.name, _plain(getattr(self, f.name)))


@dataclass
class ModelConfig(_Config):
    """Architecture of a UNet++ (what is needed to rebuild the network).

    ``num_classes`` is the number of output channels: 1 means a binary
    foreground map (sigmoid), more means mutually exclusive classes (softmax,
    channel 0 = background).

    The scale the model was trained at, so inference can bring other data to it
    (``scale.py``): ``pixel_size`` per spatial axis of the model in ``pixel_unit``
    ("nm", "um" or "mm"; empty = unknown), and ``object_diameter``, the training
    set's median object diameter in pixels (for ``PredictConfig.rescale="auto"``).

    ``threshold``: the probability threshold the labels are made with (foreground of a
    one-class model; seeds and foreground of an instance model), chosen on the training
    run's validation split (``scripts/train_zoo.py``), as nnU-Net chooses its
    post-processing; None = 0.5. ``PredictConfig.threshold`` overrides it.
    """

    in_channels: int = 1
    num_classes: int = 1
    widths: tuple[int, ...] = (32, 64, 128, 256, 512)
    depth: int = 4
    spatial_dims: int = 2
    norm: NormName = "batch"
    deep_supervision: bool = True
    class_names: tuple[str, ...] = ()
    channel_names: tuple[str, ...] = ()
    pixel_size: tuple[float, ...] = ()
    pixel_unit: str = ""
    object_diameter: float | None = None
    threshold: float | None = None

    def __post_init__(self) -> None:
        self._plain_numbers()
        owner = "ModelConfig"
        if self.threshold is not None:
            _check_threshold(owner, self.threshold)
        self.widths = as_ints(owner, "widths", self.widths, 1, MAX_WIDTH)
        self.class_names = _names(owner, "class_names", self.class_names)
        self.channel_names = _names(owner, "channel_names", self.channel_names)
        self.in_channels = as_int(owner, "in_channels", self.in_channels, 1, MAX_CHANNELS)
        self.num_classes = as_int(owner, "num_classes", self.num_classes, 1, MAX_CLASSES)
        self.depth = as_int(owner, "depth", self.depth, 1, MAX_DEPTH)
        try:
            self.pixel_size = tuple(float(s) for s in self.pixel_size)
        except (TypeError, ValueError):
            raise ValueError(
                f"ModelConfig.pixel_size must be a list of numbers, got {self.pixel_size!r}"
            ) from None
        if self.object_diameter is not None:
            _check_real(owner, "object_diameter", self.object_diameter)
        check_model_scale(self)
        check_choice("ModelConfig", "spatial_dims", self.spatial_dims, (2, 3))
        check_choice("ModelConfig", "norm", self.norm, ("batch", "instance", "group"))
        if not isinstance(self.deep_supervision, bool):
            raise ValueError(
                f"ModelConfig.deep_supervision must be true or false, got {self.deep_supervision!r}"
            )
        if len(self.widths) < self.depth + 1:
            raise ValueError(
                f"ModelConfig: depth {self.depth} needs {self.depth + 1} widths "
                f"(one per level), got {len(self.widths)}: {self.widths}"
            )
        if any(w <= 0 for w in self.widths):
            raise ValueError(f"ModelConfig.widths must be positive, got {self.widths}")
        self.widths = self.widths[: self.depth + 1]
        parameters = estimate_parameters(self)
        if parameters > MAX_PARAMETERS:
            raise ValueError(
                f"ModelConfig: widths {list(self.widths)} at depth {self.depth} make about "
                f"{parameters / 1e6:.0f}M parameters (limit {MAX_PARAMETERS / 1e6:.0f}M); "
                "use smaller widths, e.g. 32 64 128 256 512"
            )
        if self.class_names and len(self.class_names) != self.num_classes:
            raise ValueError(
                f"ModelConfig.class_names needs {self.num_classes} name(s) "
                f"(one per output channel), got {self.class_names}"
            )


@dataclass
class NormalizationConfig(_Config):
    """How raw intensities become network input; stored so inference matches training.

    ``percentile``: per image, map the ``low``..``high`` percentiles to 0..1
    (robust to outliers, the default for microscopy). ``window``: fixed
    intensity window ``low``..``high`` (e.g. Hounsfield units for CT).
    ``none``: cast to float only.

    ``min_foreground`` (percentile mode): when fewer than this fraction of the
    pixels stand out from the background (a few dim objects in a mostly empty
    field) *and* the top (or, for dark objects, bottom) percentile falls on
    background, the percentiles are taken as if the objects covered this
    fraction (background pixels are subsampled), so the range spans the objects
    as in a typical image. Images whose percentiles reach their objects are
    normalised exactly as plain percentiles (42 of the 44 held-back DSB images).
    0 turns the guard off; old checkpoints get the default.
    """

    mode: NormalizationMode = "percentile"
    low: float = 1.0
    high: float = 99.8
    clip: bool = False
    min_foreground: float = 0.1

    def __post_init__(self) -> None:
        self._plain_numbers()
        check_choice("NormalizationConfig", "mode", self.mode, ("percentile", "window", "none"))
        for name in ("low", "high", "min_foreground"):
            _check_real("NormalizationConfig", name, getattr(self, name))
        _check_bool("NormalizationConfig", "clip", self.clip)
        if self.mode != "none" and not self.low < self.high:
            raise ValueError(
                f"NormalizationConfig: low ({self.low}) must be below high ({self.high})"
            )
        if self.mode == "percentile" and not (0 <= self.low and self.high <= 100):
            raise ValueError("NormalizationConfig: percentiles must lie in 0..100")
        if not 0 <= self.min_foreground < 1:
            raise ValueError(
                f"NormalizationConfig.min_foreground must lie in [0, 1) (0 = off, e.g. 0.1), "
                f"got {self.min_foreground!r}"
            )

    @classmethod
    def ct_window(cls, center: float = 40.0, width: float = 400.0) -> NormalizationConfig:
        """A Hounsfield window (default: abdominal soft tissue, W400 L40)."""
        return cls(mode="window", low=center - width / 2, high=center + width / 2, clip=True)


@dataclass
class DataConfig(_Config):
    """How images and labels are read and turned into targets.

    ``channel_axis`` / ``slice_axis`` name axes of the *input array*; ``None``
    means there is none. ``label_mode`` follows DESIGN.md: ``dense`` (0 =
    background) or ``sparse`` scribbles (0 = unlabelled and ignored, 1 =
    background, 2.. = classes). ``target`` ``instance`` turns instance ids into
    background / interior / boundary classes (3 output channels) so touching
    nuclei can be separated.
    """

    normalization: NormalizationConfig = field(default_factory=NormalizationConfig)
    label_mode: LabelMode = "dense"
    target: TargetMode = "semantic"
    channel_axis: int | None = None
    boundary_width: int = 2
    class_values: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        self._plain_numbers()
        if isinstance(self.normalization, dict):
            self.normalization = NormalizationConfig.from_dict(self.normalization)
        self.class_values = as_ints(
            "DataConfig", "class_values", self.class_values, -(2**63), 2**63
        )
        if self.channel_axis is not None:
            self.channel_axis = as_int("DataConfig", "channel_axis", self.channel_axis, -64, 63)
        check_choice("DataConfig", "label_mode", self.label_mode, ("dense", "sparse"))
        check_choice("DataConfig", "target", self.target, ("semantic", "instance"))
        check_positive("DataConfig", "boundary_width", self.boundary_width)
        if self.label_mode == "sparse" and 1 in self.class_values:
            raise ValueError(
                "DataConfig: in sparse mode label 1 means background and 0 unlabelled, so "
                f"class_values {self.class_values} cannot contain 1; use 2, 3, ... for classes"
            )


@dataclass
class TrainConfig(_Config):
    """Optimisation settings of one training (or fine-tuning) run."""

    iterations: int = 2000
    batch_size: int = 8
    patch_size: tuple[int, ...] = (256, 256)
    learning_rate: float = 1e-3
    weight_decay: float = 1e-5
    validate_every: int = 100
    validation_fraction: float = 0.2
    foreground_fraction: float = 0.7
    augment: bool = True
    elastic: bool = False
    dice_weight: float = 1.0
    device: DeviceName = "auto"
    mixed_precision: bool = True
    seed: int = 0
    freeze_encoder: bool = False
    num_workers: int = 0
    #: Random zoom range (in-plane, log-uniform); ``(0.5, 2.0)`` teaches other object sizes.
    augment_scale: tuple[float, float] = (1.0, 1.0)
    #: Share of patches zoomed (the rest keep the data's scale, so the model stays as
    #: good at it as without the augmentation; nnU-Net zooms 20 %).
    augment_scale_probability: float = 1.0
    #: Intensity ``x * U(1 - contrast, 1 + contrast) + U(-brightness, brightness)``.
    augment_contrast: float = 0.2
    augment_brightness: float = 0.1
    #: Gamma ``exp(U(-g, g))`` over the patch range (0 = off; 0.4 -> gamma 0.67..1.5).
    augment_gamma: float = 0.0
    #: Probability of a Gaussian blur (sigma 0.5..1.5 px, in-plane); 0 = off.
    augment_blur: float = 0.0
    #: Largest standard deviation of added Gaussian noise (normalised units); 0 = off.
    augment_noise: float = 0.0
    #: Keep BatchNorm running statistics fixed (a few scribbles must not re-estimate them);
    #: None = on when fine-tuning (``Trainer(initial=...)``), off from scratch.
    freeze_norm: bool | None = None
    #: Weight of the "keep what you knew" term: on unlabelled pixels, every head is pulled
    #: towards the starting model's own prediction (KL; ``losses.preservation_loss``), so a
    #: few scribbles correct a model without dragging the rest of the image. With dense
    #: labels the term holds every pixel (a painted slab is a narrow sample of the data),
    #: and a stack's slices without a class are unpainted. None = 1.0 when fine-tuning with
    #: the starting model's classes (``finetune.DENSE_PRESERVE_WEIGHT`` with dense labels),
    #: 0 from scratch; 0 = off.
    preserve_weight: float | None = None

    def __post_init__(self) -> None:
        self._plain_numbers()
        owner = "TrainConfig"
        if self.freeze_norm is not None:
            _check_bool(owner, "freeze_norm", self.freeze_norm)
        if self.preserve_weight is not None:
            value = self.preserve_weight
            if (
                isinstance(value, bool)
                or not isinstance(value, (int, float))
                or not (math.isfinite(value) and 0 <= value <= 100)
            ):
                raise ValueError(
                    f"TrainConfig.preserve_weight must lie in [0, 100] or be None, got {value!r}"
                )
        self.patch_size = as_ints(owner, "patch_size", self.patch_size, 1, MAX_PATCH)
        self.iterations = as_int(owner, "iterations", self.iterations, 1, MAX_ITERATIONS)
        self.batch_size = as_int(owner, "batch_size", self.batch_size, 1, 4096)
        self.validate_every = as_int(
            owner, "validate_every", self.validate_every, 1, MAX_ITERATIONS
        )
        self.num_workers = as_int(owner, "num_workers", self.num_workers, 0, 256)
        self.seed = as_int(owner, "seed", self.seed, 0, 2**63 - 1)  # numpy: non-negative
        for name in ("learning_rate", "weight_decay", "dice_weight"):
            value = getattr(self, name)
            if (
                isinstance(value, bool)
                or not isinstance(value, (int, float))
                or not (math.isfinite(value) and value >= 0)
            ):
                raise ValueError(f"TrainConfig.{name} must be a finite number >= 0, got {value!r}")
        check_positive("TrainConfig", "learning_rate", self.learning_rate)
        voxels = self.batch_size * math.prod(self.patch_size)
        if voxels > MAX_BATCH_VOXELS:
            raise ValueError(
                f"TrainConfig: batch_size {self.batch_size} x patch_size "
                f"{list(self.patch_size)} is {voxels} voxels per step (limit "
                f"{MAX_BATCH_VOXELS}); use a smaller batch or patch"
            )
        for name in ("validation_fraction", "foreground_fraction"):
            _check_real(owner, name, getattr(self, name))
        if isinstance(self.augment_scale, (str, bytes)) or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool)
            for v in getattr(self.augment_scale, "__iter__", lambda: [None])()
        ):
            raise ValueError(
                f"TrainConfig.augment_scale must be (low, high), got {self.augment_scale!r}"
            )
        self.augment_scale = tuple(float(s) for s in self.augment_scale)  # type: ignore
        low_high = self.augment_scale
        if len(low_high) != 2 or not 0 < low_high[0] <= low_high[1] or low_high[1] > 8:
            raise ValueError(
                f"TrainConfig.augment_scale must be (low, high) with 0 < low <= high <= 8, "
                f"e.g. (0.5, 2.0), or (1.0, 1.0) for off; got {self.augment_scale}"
            )
        for name, top in (
            ("augment_contrast", 0.9),
            ("augment_brightness", 1.0),
            ("augment_gamma", 2.0),
            ("augment_blur", 1.0),
            ("augment_noise", 1.0),
            ("augment_scale_probability", 1.0),
        ):
            value = getattr(self, name)
            if (
                isinstance(value, bool)
                or not isinstance(value, (int, float))
                or not (0 <= value <= top)
            ):
                raise ValueError(f"TrainConfig.{name} must lie in [0, {top}], got {value!r}")
        if not 0 <= self.validation_fraction < 1:
            raise ValueError("TrainConfig.validation_fraction must lie in [0, 1)")
        if not 0 <= self.foreground_fraction <= 1:
            raise ValueError("TrainConfig.foreground_fraction must lie in [0, 1]")
        if len(self.patch_size) not in (2, 3) or any(p <= 0 for p in self.patch_size):
            raise ValueError(
                f"TrainConfig.patch_size must be 2 or 3 positive sizes, got {self.patch_size}"
            )
        check_choice("TrainConfig", "device", self.device, ("auto", "cuda", "mps", "cpu"))


@dataclass
class PredictConfig(_Config):
    """Settings of one inference run.

    ``depths``: which deep-supervision heads to return (empty = all);
    ``pruned_depth``: run only the pruned sub-network of that depth (fast path).
    ``tile_size`` is per spatial axis of the model (2 or 3 values).
    ``adaptive_depth``: per tile, run the shallow heads first and go deeper only
    while the labels of consecutive heads differ on at least ``depth_tolerance``
    of the tile's pixels (0 = always the deepest head, exactly); see ``adaptive.py``.
    ``int8``: run the network in int8 on the CPU (2D models with BatchNorm; opt-in,
    calibrated on the image's first tiles; see ``quantize.py``): 2.1-2.6x faster than
    float32 on a CPU without bfloat16, EM membrane IoU unchanged.

    Scale (see ``scale.py``): ``pixel_size`` is the input's physical pixel size
    (one value, or one per spatial axis of the input, e.g. a layer's ZYX scale),
    in ``pixel_unit`` (empty = the model's unit); with a model that records its
    training pixel size, the input is resampled to it. ``rescale`` zooms the input
    by a factor (model object size / input object size), or ``"auto"``: a first
    pass measures the objects' median diameter and a second pass runs at the
    model's training size. Outputs always come back on the input's grid.

    ``threshold``: the probability threshold of the labels; None = the model's own
    (``ModelConfig.threshold``, chosen on its validation split), else 0.5.
    """

    depths: tuple[int, ...] = ()
    pruned_depth: int | None = None
    tile_size: tuple[int, ...] = (256, 256)
    overlap: float = 0.25
    batch_size: int = 4
    blending: Literal["gaussian", "constant"] = "gaussian"
    tta: bool = False
    device: DeviceName = "auto"
    mixed_precision: bool = True
    threshold: float | None = None
    min_size: int = 0
    adaptive_depth: bool = False
    depth_tolerance: float = 0.05
    pixel_size: tuple[float, ...] | None = None
    pixel_unit: str = ""
    rescale: float | Literal["auto"] | None = None
    int8: bool = False

    def __post_init__(self) -> None:
        self._plain_numbers()
        owner = "PredictConfig"
        check_predict_scale(self)
        # a run.json's "predict" section may hold anything: types first, so that a list where
        # a number goes is a ValueError naming the field, not a TypeError from a comparison
        self.depths = as_ints(owner, "depths", self.depths, -(2**31), 2**31)
        self.tile_size = as_ints(owner, "tile_size", self.tile_size, -(2**31), 2**31)
        if self.pruned_depth is not None:
            self.pruned_depth = as_int(owner, "pruned_depth", self.pruned_depth, -(2**31), 2**31)
        self.min_size = as_int(owner, "min_size", self.min_size, -(2**63), 2**63)
        for name in ("overlap", "depth_tolerance"):
            _check_real(owner, name, getattr(self, name))
        if self.threshold is not None:
            _check_threshold(owner, self.threshold)
        for name in ("tta", "mixed_precision", "adaptive_depth", "int8"):
            _check_bool(owner, name, getattr(self, name))
        if not 0 <= self.overlap < 1:
            raise ValueError(f"PredictConfig.overlap must lie in [0, 1), got {self.overlap}")
        check_positive("PredictConfig", "batch_size", self.batch_size)
        check_choice("PredictConfig", "blending", self.blending, ("gaussian", "constant"))
        check_choice("PredictConfig", "device", self.device, ("auto", "cuda", "mps", "cpu"))
        if any(t <= 0 for t in self.tile_size):
            raise ValueError(f"PredictConfig.tile_size must be positive, got {self.tile_size}")
        if self.pruned_depth is not None and self.pruned_depth < 1:
            raise ValueError(f"PredictConfig.pruned_depth must be >= 1, got {self.pruned_depth}")
        if self.min_size < 0:
            raise ValueError(f"PredictConfig.min_size must be >= 0, got {self.min_size}")
        if not 0 <= self.depth_tolerance <= 1:
            raise ValueError(
                f"PredictConfig.depth_tolerance must lie in [0, 1] (a fraction of a tile's "
                f"pixels), got {self.depth_tolerance}; the default 0.05 gave -0.005 IoU at "
                "0.65x the time on EM"
            )
        if self.adaptive_depth and (self.pruned_depth is not None or self.depths or self.tta):
            raise ValueError(
                "PredictConfig.adaptive_depth chooses the depth per tile: leave pruned_depth, "
                "depths and tta unset (or set adaptive_depth=False)"
            )
        if self.adaptive_depth and self.int8:
            raise ValueError(
                "PredictConfig.int8 does not run the adaptive depth (per-tile heads): set "
                "int8=False (drop --int8), or adaptive_depth=False (a --depth or --depths)"
            )


def _plain(value: Any) -> Any:
    """A numpy scalar (or one in a tuple or list) as the Python number or bool it holds, a
    numpy array as a tuple of them; anything else unchanged (no numpy import here)."""
    if type(value).__module__ == "numpy" and hasattr(value, "tolist"):
        plain = value.tolist()
        return tuple(plain) if isinstance(plain, list) else plain
    if isinstance(value, (tuple, list)):
        return type(value)(_plain(v) for v in value)
    return value


def _check_real(owner: str, name: str, value: Any) -> None:
    """A finite real number (not a bool, a string or a list)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{owner}.{name} must be a number, got {value!r}")


def _check_threshold(owner: str, value: Any) -> None:
    """A probability threshold strictly between 0 and 1 (0 or 1 would label all or nothing)."""
    _check_real(owner, "threshold", value)
    if not 0 < value < 1:
        raise ValueError(
            f"{owner}.threshold must lie in (0, 1), got {value}; 0.5 is the usual, "
            "or None for the model's own"
        )


def _names(owner: str, name: str, value: Any) -> tuple[str, ...]:
    """A list of names (class or channel names from a config.json)."""
    if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)):
        raise ValueError(f"{owner}.{name} must be a list of names, got {value!r}")
    return tuple(str(v) for v in value)


def _check_bool(owner: str, name: str, value: Any) -> None:
    if not isinstance(value, bool):
        raise ValueError(f"{owner}.{name} must be true or false, got {value!r}")


_NESTED: dict[tuple[str, str], type[_Config]] = {
    ("DataConfig", "normalization"): NormalizationConfig,
}
