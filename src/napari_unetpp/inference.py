"""Tiled inference: every requested depth of a UNet++ in one pass, at any image size.

``predict`` is a generator of :class:`PredictEvent` that *returns* the per-depth
probabilities, so the napari widget (through ``thread_worker``), the CLI and a
test drive the same code (:func:`predict_array` runs it to the end).

What it does, and why
---------------------
- Normalises exactly as training did (``normalization.normalize``): the intensity range
  of ``percentile`` mode is computed once per image (a stack counts as one image,
  as in training) on a strided subsample, so a dask stack is never loaded whole.
- A 2D model runs slice by slice over any leading axes (Z, T); a 3D model runs
  on the last three axes, item by item over the rest.
- Tiles (``tiling.iter_sliding_window``) are rounded up to a multiple of
  ``2**model.depth`` and placed on that grid, so every tile shares the pooling
  grid of the image: overlapping tiles agree, there are no seams, and the same
  settings give the same tiles for every depth (all heads at once, one head, or
  the pruned network agree exactly).
- All requested heads come from one network pass (shared nodes run once);
  ``pruned_depth`` runs only ``model.prune(d)`` (the fast path of the pruning slider).
- On CUDA the tiles are blended on the GPU (one band of sums, when it takes under
  a quarter of the free memory), so tile outputs never travel one by one.
- CUDA out-of-memory: the tile batch is halved and retried, then the job moves to
  the CPU; blending that runs out of GPU memory redoes the slice on the host. Each
  step is reported in a ``"fallback"`` event.
- ``out``: results go into zarr arrays in that folder as tiles finish (memory is
  bounded by the tile batch and one band of tiles, not by the volume).

Cancellation
------------
Cooperative, as everywhere in the engine: when ``stopper.stopped`` is seen (it is
checked after every event), ``predict`` stops after the current tile batch and
*returns what is done*; the result's ``complete`` attribute is ``False``, the last
event has kind ``"stopped"``, and parts not reached are 0 (in a zarr ``out`` the
group attribute ``complete`` is false too). No exception is raised: a stop is a
user's choice, not an error. (Stopped before the first tile, the result is empty.)

Example
-------
>>> import numpy as np
>>> from napari_unetpp.config import DataConfig, PredictConfig
>>> from napari_unetpp.model import UNetPlusPlus
>>> net = UNetPlusPlus(widths=(4, 8, 16), depth=2)
>>> probs = predict_array(net, np.zeros((40, 50), "uint8"), PredictConfig(device="cpu"),
...                       DataConfig())
>>> sorted(probs), probs[2].shape, probs.complete
([1, 2], (40, 50), True)
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Generator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch

from . import stitching, stores, tiling
from .config import DataConfig, PredictConfig
from .devices import empty_cache, is_out_of_memory, resolve_device
from .events import EtaClock, Event, Stopper, drive
from .layout import ItemSink, ItemView, image_layout, output_shape, stacked_item
from .model import UNetPlusPlus
from .nonfinite import non_finite_filler
from .normalization import TileNormaliser, as_model_input, contrast_problem, range_and_defects
from .predictor import TileRunner, cached_derived, precision_note, prepare_int8, prepare_on

__all__ = ["PredictEvent", "PredictResult", "predict", "predict_array"]


@dataclass
class PredictEvent(Event):
    """Progress of :func:`predict`; ``step`` / ``total`` count tiles over the whole job.

    Kinds: ``"start"`` (step 0, before the first tile), ``"tiles"`` (after each
    tile batch), ``"fallback"`` (out of memory: smaller batch or CPU, see
    ``message``), ``"stopped"`` (the stopper was seen; the result is partial),
    ``"done"``.
    """

    depths: tuple[int, ...] = ()
    device: str = ""
    item: int = 0
    items: int = 1
    batch_size: int = 0


class PredictResult(dict):  # type: ignore[type-arg]
    """``{depth: probabilities}`` plus how the run ended.

    A plain ``dict`` for every consumer; ``complete`` is ``False`` when the run
    was stopped (unreached parts are 0), ``path`` is the zarr folder when
    ``out`` was given. ``scale`` says what resampling was used (zoom, pixel
    sizes, measured object diameter; see ``rescaled.py``), ``None`` when none.
    """

    scale: dict[str, Any] | None = None

    def __init__(self, arrays: dict[int, Any], complete: bool, path: Path | None = None) -> None:
        super().__init__(arrays)
        self.complete = complete
        self.path = path


# --------------------------------------------------------------------------- predict


def _plan_depths(
    model: UNetPlusPlus, config: PredictConfig
) -> tuple[UNetPlusPlus, tuple[int, ...]]:
    """The network to run and the heads it returns (pruned fast path or shared pass)."""
    heads = model.head_depths
    bad = [d for d in config.depths if d not in heads]
    if bad:
        raise ValueError(
            f"PredictConfig.depths {list(config.depths)}: this model has heads at depths "
            f"{list(heads)}; choose among those (or leave depths empty for all)"
        )
    d = config.pruned_depth
    if d is None:
        return model, tuple(sorted(set(config.depths))) or heads
    if d not in heads:
        raise ValueError(
            f"PredictConfig.pruned_depth {d}: this model has heads at depths {list(heads)}"
        )
    if config.depths and set(config.depths) != {d}:
        raise ValueError(
            f"pruned_depth={d} returns head {d} only, but depths={list(config.depths)}; "
            f"leave depths empty (or set it to ({d},)), or unset pruned_depth"
        )
    return (
        model if heads == (d,) else cached_derived(model, ("pruned", d), lambda: model.prune(d))
    ), (d,)


def _tile_shape(config: PredictConfig, spatial: tuple[int, ...], multiple: int) -> tuple[int, ...]:
    """Tiles on the model's pooling grid, no larger than the (rounded-up) image."""
    if len(config.tile_size) != len(spatial):
        example = (256, 256) if len(spatial) == 2 else (64, 128, 128)
        raise ValueError(
            f"PredictConfig.tile_size {config.tile_size} has {len(config.tile_size)} values but "
            f"the model is {len(spatial)}D; give {len(spatial)}, e.g. tile_size={example}"
        )
    return tuple(
        tiling.round_up(min(t, s), multiple)
        for t, s in zip(config.tile_size, spatial, strict=False)
    )


def _accumulate_on(
    device: torch.device, channels: int, tile: tuple[int, ...], spatial: tuple[int, ...]
) -> torch.device | None:
    """Blend on the GPU when one band of float32 sums takes under a quarter of its free memory.

    Why: on the host, stitching every head's tiles costs more than the network on a
    fast GPU; on the GPU the tiles never travel. A huge 3D band stays on the host.
    """
    if device.type != "cuda":
        return None
    band_bytes = 4 * (channels + 2) * min(tile[0], spatial[0]) * int(np.prod(spatial[1:]))
    free, _ = torch.cuda.mem_get_info(device)
    return device if band_bytes < free / 4 else None


def _blend_device(
    device: torch.device, channels: int, tile: tuple[int, ...], spatial: tuple[int, ...]
) -> torch.device | None:
    """Where tiles are cut and blended: the GPU (if the band fits), torch on the CPU, else numpy.

    Why torch on the CPU: its element-wise kernels use every core where numpy uses
    one, and the tiles then go from the normalised band to the network without a
    numpy round trip.
    """
    if device.type == "cpu":
        return device
    return _accumulate_on(device, channels, tile, spatial)


def _host_target(
    arrays: Any, lead: tuple[int, ...], num_classes: int, accumulate_on: torch.device | None
) -> np.ndarray | None:
    """Where one item's tiles can be blended in place: the in-memory results, when the
    blending runs on the host (on a GPU the band stays there and is copied out once)."""
    if not isinstance(arrays, stores.HostOutputs):
        return None
    if accumulate_on is not None and accumulate_on.type != "cpu":
        return None
    return stacked_item(arrays.stacked, lead, num_classes)


def _normaliser(image: Any, data_config: DataConfig) -> TileNormaliser:
    """Per-tile normalisation with one intensity range for the whole image (or stack)."""
    norm = data_config.normalization
    value_range, defects = range_and_defects(image, norm)
    problem = contrast_problem(image, norm, value_range)
    if problem is not None:  # a blank frame or an empty channel: the labels would be noise
        warnings.warn(
            f"{problem}: there is nothing to segment, and the labels only show what the "
            "model makes of a flat field",
            stacklevel=2,
        )
    if defects is not None:  # hot / dead camera pixels: left out of the range and repaired
        defects.warn(int(np.prod(image.shape)))
    fill = non_finite_filler(image, normalization=norm)  # NaN: filled with a warning, or refused
    return TileNormaliser(norm, value_range, fill, defects)


def predict(
    model: UNetPlusPlus,
    image: Any,
    predict_config: PredictConfig,
    data_config: DataConfig,
    *,
    out: str | Path | None = None,
    stopper: Stopper | None = None,
) -> Generator[PredictEvent, None, PredictResult]:
    """Per-depth probabilities of ``image``, tile by tile; a generator of events.

    Parameters
    ----------
    model
        A :class:`UNetPlusPlus` (left untouched: a folded copy runs).
    image
        numpy, dask or zarr array; channels at ``data_config.channel_axis``. A 2D
        model reads the last two other axes as YX (leading ones slice by slice),
        a 3D model the last three as ZYX.
    predict_config
        Depths, pruned fast path, tiles, overlap, batch, blending, TTA, device.
    data_config
        Normalisation and channel axis, as saved with the model.
    out
        A folder: write one zarr array per depth there (``L1``, ``L2``...) as
        tiles finish, and return those arrays (for data larger than memory).
    stopper
        Checked after every event; when set, the partial result is returned
        (``result.complete`` is ``False``).

    Returns
    -------
    PredictResult
        ``{depth: float32 probabilities}``: the image's shape without channels
        when ``num_classes == 1`` (sigmoid), else ``(num_classes, *that)`` (softmax).

    ``predict_config.pixel_size`` / ``rescale`` first resample the image to the
    model's scale and the outputs back to the image's grid (``rescaled.py``).
    """
    from .rescaled import needs_rescaling, predict_rescaled

    image, grey = as_model_input(image, model.config.in_channels, data_config.channel_axis)
    if grey:
        warnings.warn(
            "an RGB image for a one-channel model: segmented as its luminance", stacklevel=2
        )
    if needs_rescaling(predict_config):  # resample to the model's scale, then back (rescaled.py)
        return (
            yield from predict_rescaled(
                model, image, predict_config, data_config, out=out, stopper=stopper
            )
        )
    if predict_config.adaptive_depth:  # per-tile depth: adaptive.py, on the same tiling
        from .adaptive import predict_adaptive

        return (
            yield from predict_adaptive(
                model, image, predict_config, data_config, out=out, stopper=stopper
            )
        )
    if not hasattr(image, "shape") or not hasattr(image, "__getitem__"):
        image = np.asarray(image)
    shape = tuple(int(s) for s in image.shape)
    layout = image_layout(shape, data_config.channel_axis, model)
    net, depths = _plan_depths(model, predict_config)
    multiple = 2**model.depth  # same grid for every depth: all heads, one head, pruned agree
    tile = _tile_shape(predict_config, layout.spatial_shape, multiple)
    device = resolve_device(predict_config.device)
    num_classes = model.config.num_classes
    stopped = (lambda: stopper.stopped) if stopper is not None else (lambda: False)

    items = list(np.ndindex(*layout.lead_shape))
    grid = tiling.tile_grid(layout.spatial_shape, tile, predict_config.overlap, multiple)
    per_item = len(grid)
    row_starts = sorted({start[0] for start in grid})
    total = per_item * len(items)
    mixed = predict_config.mixed_precision and not predict_config.int8
    notes: list[str] = []
    if predict_config.int8:  # calibrated on the first tile batch (quantize.py)
        prepared = prepare_int8(net, depths, device)
    else:
        prepared, device, notes = prepare_on(net, device, mixed)
    runner = TileRunner(
        prepared,  # type: ignore[arg-type]
        depths,
        device,
        num_classes,
        predict_config.tta,
        mixed,
        predict_config.batch_size,
    )
    runner.messages.extend(notes)

    def event(kind: str, step: int, item: int, message: str = "", eta: float | None = None):
        return PredictEvent(
            kind,
            step,
            total,
            message,
            eta,
            depths,
            str(runner.device),
            item,
            len(items),
            runner.chunk,
        )

    precision = precision_note(prepared, device, mixed)
    yield event(
        "start",
        0,
        0,
        f"predicting depths {list(depths)} on {device}{precision}, {total} tile(s) of {tile}",
    )
    for message in runner.messages:
        yield event("fallback", 0, 0, message)
    runner.messages.clear()
    if stopped():
        return PredictResult({}, complete=False)
    normalise = _normaliser(image, data_config)
    arrays, group = stores.allocate_outputs(
        depths, output_shape(shape, layout.channel_axis, num_classes), tile, out
    )
    accumulate_on = _blend_device(
        runner.device, num_classes * len(depths), tile, layout.spatial_shape
    )
    clock = EtaClock()
    done, complete = 0, True
    ratios = stitching.RatioCache()  # the items of a stack share their tiling

    def tiles(
        lead: tuple[int, ...], accumulate_on: torch.device | None
    ) -> Generator[tiling.TileProgress, None, Any]:
        sinks = {d: ItemSink(a, lead, num_classes == 1) for d, a in arrays.items()}
        view = ItemView(
            image,
            layout,
            lead,
            normalise,
            accumulate_on,
            prefetch=accumulate_on is not None and accumulate_on.type == "cuda",
            row_starts=row_starts,
            height=tile[0],
        )
        return tiling.iter_sliding_window(
            runner,
            view,
            tile,
            predict_config.overlap,
            predict_config.batch_size,
            predict_config.blending,
            align=multiple,
            allocate=lambda key, _shape: sinks[cast(int, key)],
            should_stop=stopped,
            accumulate_on=accumulate_on,
            into=_host_target(arrays, lead, num_classes, accumulate_on),
            ratios=ratios,
            tile_dtype=runner.input_dtype,
        )

    for n, lead in enumerate(items):
        while True:  # an item is redone on the host if blending on the GPU ran out of memory
            try:
                done = yield from _run_item(
                    tiles(lead, accumulate_on), runner, event, done, total, n, clock
                )
                break
            except Exception as exc:  # noqa: BLE001 - re-raised unless a GPU blending OOM
                if accumulate_on is None or not is_out_of_memory(exc):
                    raise
            accumulate_on = None
            empty_cache(runner.device)
            yield event(
                "fallback",
                done,
                n,
                "out of GPU memory while blending tiles: "
                "blending in host memory from now on (slower)",
            )
        if stopped():
            complete = done >= total
            break
    if group is not None:
        stores.mark_complete(group, complete)
    result = PredictResult(arrays, complete, Path(out) if out is not None else None)
    if not complete:
        yield event(
            "stopped",
            done,
            len(items) - 1,
            "stopped: the result is partial (parts not reached are 0)",
        )
    else:
        yield event("done", total, len(items) - 1, f"predicted {len(items)} item(s)")
    return result


def _run_item(
    gen: Generator[tiling.TileProgress, None, Any],
    runner: TileRunner,
    event: Callable[..., PredictEvent],
    done: int,
    total: int,
    item: int,
    clock: EtaClock,
) -> Generator[PredictEvent, None, int]:
    """Drive one item's sliding window, turning its progress into events; return tiles done."""
    step = done
    while True:
        try:
            progress = next(gen)
        except StopIteration:
            return step
        step = done + progress.done
        for message in runner.messages:
            yield event("fallback", step, item, message)
        runner.messages.clear()
        yield event("tiles", step, item, eta=clock.update(step, total))


def predict_array(
    model: UNetPlusPlus,
    image: Any,
    predict_config: PredictConfig,
    data_config: DataConfig,
    *,
    out: str | Path | None = None,
    stopper: Stopper | None = None,
    callback: Callable[[PredictEvent], Any] | None = None,
) -> PredictResult:
    """:func:`predict` run to the end (for scripts and notebooks): ``drive(predict(...))``."""
    return drive(
        predict(model, image, predict_config, data_config, out=out, stopper=stopper), callback
    )
