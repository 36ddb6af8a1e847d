"""Is this image like the training data? The thresholds, the verdict and its remedies.

Why apart from :mod:`disagreement`: the maps there say *where* the heads disagree;
:mod:`image_signals` turns one pass's probabilities into a handful of per-image numbers
(depth and flip disagreement, uncertain fraction, object size, scale gain), and this
module judges them against thresholds calibrated per model. :func:`judge` and
:func:`calibrate` are pure, so the benchmark re-runs the verdict on stored signals
without predicting again; :func:`disagreement.check_image` runs the predictions and
calls them. The remedies' words for each reader are in :mod:`remedies`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .config import DataConfig, NormalizationConfig
from .disagreement import ADVICE_MIN_PIXELS, DepthAdvice
from .image_signals import TISSUE_PEAKS_HU, image_signals
from .remedies import Audience, Remedy, phrased
from .scale import MAX_ZOOM, MIN_ZOOM

__all__ = [
    "ImageCheck",
    "empty_result_check",
    "flat_image_check",
    "tiny_image_check",
    "units_image_check",
    "units_problem",
    "NOISE_REMEDY",
    "SCALE_GAIN_LOW_CAP",
    "SIZE_HINT",
    "THRESHOLDS",
    "calibrate",
    "calibrate_intensity",
    "calibrate_on_tiles",
    "INTENSITY_FLOOR",
    "judge",
    "no_classes_here",
    "values_shifted",
    "TISSUE_SHIFT_LIMIT",
]

#: Fallback warning thresholds, for a model without its own calibration (a checkpoint's
#: ``metrics["image_check"]``, see :func:`calibrate`): the largest of the zoo models'
#: calibrated values (benchmarks/bench_depth.py). A signal above its threshold marks the
#: image as unlike the training data; ``size_ratio`` is a factor either way (objects that
#: much larger or smaller than the training median): DSB nuclei vary up to 2.9x between
#: images of the held-back split, so 2.5 keeps native images quiet.
THRESHOLDS: dict[str, float] = {
    "depth_disagreement": 0.19,
    "flip_disagreement": 0.06,
    "uncertain_fraction": 0.17,
    "size_ratio": 2.5,
    "scale_gain": 1.6,
    "half_size_ratio": 1.6,
    "found_gain": 2.0,
}
#: ``found_gain`` (an image too small to halve, probed at twice its size): the CT model
#: labels 0.54-0.77x as much of its native 3 mm slices at twice their size (forced probe),
#: and 2.3-8.9x as much of the same slices at 6 mm, where it finds almost no organ at their
#: own size (shares floored at 0.01); EM: 0.96-1.22 native, 0.86-0.94 at 8 nm. A fixed
#: limit: natives large enough to halve never run the probe, so none calibrates it.
#: The most a calibrated ``scale_gain_low`` may be (:func:`calibrate`): an image is called
#: "objects smaller than in training" only when its depths agree at least 1.1x better at
#: full size than at half size, and than on every native validation image (1/1.1 of the
#: smallest). No fallback: an uncalibrated model has no low limit, as DSB natives go down
#: to 0.30 (small nuclei fade at half size) while EM natives stay above 0.89.
SCALE_GAIN_LOW_CAP = 0.9
#: A size ratio beyond this (but within ``size_ratio``) gives a hint, not a warning.
SIZE_HINT = 1.5


@dataclass
class ImageCheck:
    """Is this image like the training data? Signals, verdict, reasons, remedies, depth advice."""

    signals: dict[str, float | None]
    unlike_training: bool
    reasons: list[str] = field(default_factory=list)
    remedies: list[str] = field(default_factory=list)
    advice: DepthAdvice | None = None
    #: False when the image was too small to judge (``reasons`` says why): no verdict.
    judged: bool = True

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: for ``info --on --json`` and a run's ``run.json``."""
        return {
            "signals": self.signals,
            "judged": self.judged,
            "unlike_training": self.unlike_training,
            "reasons": self.reasons,
            "remedies": self.remedies,
            "advice": None if self.advice is None else dict(self.advice.__dict__),
        }

    def remedies_for(self, audience: Audience) -> list[str]:
        """The remedies naming ``audience``'s controls (the CLI's flags, the dock's fields)."""
        return [phrased(r, audience) for r in self.remedies]

    def report(self, audience: Audience = "cli") -> str:
        """Lines for a CLI or (``audience="dock"``) a notification."""
        shown = ", ".join(f"{k} {v:.3f}" for k, v in self.signals.items() if v is not None)
        if not self.judged:
            lines = [f"not compared with the training data: {'; '.join(self.reasons)}"]
        else:
            lines = [
                (
                    "WARNING: this image looks unlike the model's training data"
                    if self.unlike_training
                    else "this image looks like the training data"
                )
                + (f" ({shown})" if shown else "")
            ]
            lines += [f"  - {r}" for r in self.reasons]
        lines += [f"  remedy: {r}" for r in self.remedies_for(audience)]
        if self.advice is not None:
            lines.append(f"depth: {self.advice.message}")
        return "\n".join(lines)


def flat_image_check(problem: str) -> ImageCheck:
    """The verdict on an image without contrast (``problem``, from
    :func:`normalization.contrast_problem`): nothing in it to judge (or segment).

    Why: its signals read as "like the training data" (the depths agree on a flat field),
    which contradicted the "no contrast" warning printed just before.
    """
    return ImageCheck(
        signals={},
        unlike_training=True,
        reasons=[problem],
        remedies=["check that the layer, file, channel or plane is the image you mean"],
    )


#: What most CT scanners add to Hounsfield units when storing them (RescaleIntercept -1024).
HU_OFFSET = 1024
OFFSET_WORDS = f"stored with {HU_OFFSET} added"


def units_problem(image: Any, normalization: NormalizationConfig) -> str | None:
    """Why ``image`` cannot hold the units of a model's fixed window that reaches below 0
    (CT: Hounsfield units), in words, or None when it can.

    Why: a scan exported with its window/level applied (0..255) or read without its
    ``RescaleIntercept`` (0..4095) has no value below 0, while every abdominal CT slice
    holds air (-1000 HU) or fat (-100 HU); the CT model then saw a body of bright soft
    tissue, and the check's remedy sent a radiologist to the pixel size.
    """
    from .normalization import subsample

    if normalization.mode != "window" or normalization.low >= 0:
        return None
    sample = np.asarray(subsample(image), dtype=np.float64)
    sample = sample[np.isfinite(sample)]
    if sample.size == 0 or sample.min() < 0:
        return None
    low, high = float(sample.min()), float(sample.max())
    if (
        normalization.low < 0 < normalization.high
        and low < HU_OFFSET - 800 < HU_OFFSET + 200 < high
    ):
        # air near 0 and bone above 1224: HU stored + 1024, not an 8-bit window export
        return (
            f"its values are {low:g}..{high:g}, none below 0: not the units of the model's "
            f"intensity window ({normalization.low:g}..{normalization.high:g} Hounsfield "
            f"units) but Hounsfield units {OFFSET_WORDS} (air at {low:g} instead of -1000), "
            "as a scanner stores them before its RescaleIntercept is applied"
        )
    return (
        f"its values are {sample.min():g}..{sample.max():g}, none below 0: not the units of "
        f"the model's intensity window ({normalization.low:g}..{normalization.high:g}; for CT "
        "Hounsfield units, where air is -1000 and fat -100), so a window/level was already "
        "applied (an 8-bit export) or the scanner's values lack their RescaleIntercept"
    )


def units_image_check(problem: str) -> ImageCheck:
    """The verdict on an image in the wrong units (``problem``, from :func:`units_problem`):
    its depth signals would only blame the pixel size."""
    if OFFSET_WORDS in problem:  # a TIFF export has no DICOM to go back to: say the sum
        return ImageCheck(
            signals={},
            unlike_training=True,
            reasons=[problem],
            remedies=[
                f"subtract {HU_OFFSET} from the image to get Hounsfield units (Fiji: "
                f"Process > Math > Subtract...; napari's console: layer.data = "
                f"layer.data.astype('int16') - {HU_OFFSET}), or open the DICOM series, "
                "whose RescaleIntercept the reader applies"
            ],
        )
    return ImageCheck(
        signals={},
        unlike_training=True,
        reasons=[problem],
        remedies=[
            "open the scan's original values (the DICOM series, or a NIfTI converted from "
            "it, e.g. with dcm2niix), not a windowed or screenshot export"
        ],
    )


def empty_result_check(
    class_names: Sequence[str], normalization: NormalizationConfig, depth: int
) -> ImageCheck:
    """What a result without a single class pixel (at head ``depth``) is told: its reason
    and remedies go first in :func:`disagreement.check_prediction`'s verdict.

    Why: its heads agree on the empty result and are sure of it, so no signal fired: a
    CT darkened by 300 HU (its organs below the CT model's window) came out with no organ
    at all and "done" (liver Dice 0.00; QA session 13). Nothing found is told, with what
    to check: the intensities for a model of a fixed window, else the image and its scale.
    """
    names = [n for n in class_names if n != "background"] or ["any class"]
    what = ", ".join(names)
    reason = f"the model found nothing in this image: no pixel labelled {what} at L{depth}"
    remedies: list[str] = []
    if normalization.mode == "window":
        remedies.append(
            "check the image's intensities: the model reads them through its intensity "
            f"window {normalization.low:g}..{normalization.high:g} (for CT: Hounsfield "
            "units, air -1000, fat -100, organs 20..80), and values shifted out of it (a "
            "RescaleIntercept missing or applied twice, another modality) look like nothing "
            "to it"
        )
    remedies.append(
        Remedy(
            "check that the image (its channel, its plane) shows what this model segments "
            f"({what}); " + "if it does, {check_scale}"
        )
    )
    return ImageCheck(signals={}, unlike_training=True, reasons=[reason], remedies=remedies)


def tiny_image_check(pixels: int) -> ImageCheck | None:
    """No verdict on an image of ``pixels`` under ``ADVICE_MIN_PIXELS`` (32 x 32, the depth
    advice's limit too), else None.

    Why: one uncertain pixel of 64 is 1.6 %; an 8 x 8 or 1 x 256 crop was called "unlike
    the training data", with a remedy, while the depth advice said it was too small.
    """
    if pixels >= ADVICE_MIN_PIXELS:
        return None
    return ImageCheck(
        signals={},
        unlike_training=False,
        reasons=[f"the image is too small ({pixels} pixels; {ADVICE_MIN_PIXELS} needed) to judge"],
        judged=False,
    )


def _above(value: float, limit: float) -> str:
    """``"0.1274 > 0.1271"``: as few decimals (3 to 6) as show the value above its limit
    (at 3 a value just over read "0.127 > 0.127")."""
    for places in range(3, 7):
        if round(value, places) > round(limit, places):
            break
    return f"{value:.{places}f} > {limit:.{places}f}"


def judge(
    signals: Mapping[str, float | None],
    thresholds: Mapping[str, float] = THRESHOLDS,
    *,
    zoom: float = 1.0,
    auto: bool = False,
) -> tuple[bool, list[str], list[str]]:
    """Verdict, reasons and remedies from the signals (pure: the calibration re-runs it).

    ``zoom``: the zoom the checked pass ran at (a pixel size or rescale); sizes are at the
    model's scale, so the rescale a remedy names is ``zoom`` times the factor still
    missing there (a 2x image run with ``rescale=2`` needs 0.56 in all, not 0.28).
    ``auto``: that zoom came from ``rescale="auto"``: no remedy proposes it again.
    """
    reasons: list[str] = []
    for name in ("depth_disagreement", "flip_disagreement", "uncertain_fraction"):
        value = signals.get(name)
        if value is not None and value > thresholds[name]:
            reasons.append(f"{name.replace('_', ' ')} {_above(value, thresholds[name])}")
    ratio = signals.get("size_ratio")
    limit = thresholds["size_ratio"]
    size_off = ratio is not None and not 1 / limit <= ratio <= limit
    gain = signals.get("scale_gain")
    gain_fired = gain is not None and gain > thresholds["scale_gain"]
    split = signals.get("half_size_ratio")
    split_fired = split is not None and split > thresholds["half_size_ratio"]
    shifted = _intensity_shift(signals, thresholds)
    if shifted:  # the depths' agreement at half size says nothing about size then
        gain_fired = split_fired = False
    larger = gain_fired or split_fired
    noisy = _noisier_than_tolerated(signals, thresholds)
    # noise averages out at half size, so the depths of a noisy image agree better there
    # too: not "objects smaller" (a CT at its own 3 mm, 40 HU of noise, was told to
    # "rescale the image by 2.00": liver Dice 0.25 -> 0.00; QA session 13)
    found = signals.get("found_gain")
    found_fired = found is not None and found > thresholds["found_gain"]
    smaller_gain = _smaller_than_training(gain, thresholds)
    smaller = not larger and not noisy and not shifted and (smaller_gain or found_fired)
    # small measured objects that the half-size pass shows to be larger: fragments of
    # large objects (the 537 pieces for 23 nuclei), not small objects to enlarge
    fragments = larger and ratio is not None and ratio < 1
    # tiny "objects" on an image noisier than the model tolerates are the noise's specks:
    # an enlargement makes more of them (a dim nuclei image, its 46 px nuclei rightly
    # shrunk 0.39x by auto object size, was told "rescale the image by 4.64"; QA session 14)
    specks = bool(noisy) and size_off and ratio is not None and ratio < 1 and not larger
    if size_off and not fragments and ratio is not None:
        bound = limit if ratio > 1 else 1 / limit  # the side crossed ("0.38x (limit 2.50x)")
        reasons.append(f"objects are {ratio:.2f}x the training size (limit {bound:.2f}x)")
    if gain_fired:
        reasons.append(
            f"the depths agree {gain:.1f}x better at half size: objects look "
            "larger than in training"
        )
    if split_fired:
        reasons.append(
            f"objects found at half size are {split:.1f}x those at full size: large "
            "objects are being split into training-sized pieces"
        )
    if smaller and found_fired and found is not None:
        reasons.append(
            f"the model labels {found:.1f}x as much of the image at twice its size "
            f"(limit {thresholds['found_gain']:.1f}x): objects look smaller than in training"
        )
    if smaller and smaller_gain and gain is not None:
        reasons.append(
            f"the depths agree {1 / gain:.1f}x better at full size than at half size "
            f"(scale gain {gain:.3f} < {thresholds['scale_gain_low']:.3f}): objects look "
            "smaller than in training"
        )
    if noisy:
        reasons.append(noisy)
    if shifted:
        reasons.insert(0, shifted[0])
    remedies: list[str] = []
    if reasons:
        if shifted:  # the intensities first: no pixel size fixes them
            remedies.append(shifted[1])
        if noisy:
            remedies.append(Remedy(NOISE_REMEDY))
        if (size_off and not specks) or larger or smaller:
            step = 0.5 if larger else 2.0  # smaller: enlarge (e.g. 8 nm pixels, not 4)
            factor = zoom * (1 / ratio if size_off and ratio and not fragments else step)
            sized = ratio is not None or split is not None  # the model knows its object size
            measured = signals.get("object_diameter")
            if not MIN_ZOOM <= factor <= MAX_ZOOM:
                remedies.append(
                    Remedy(
                        "no rescale can bring these objects to the training size (it would "
                        f"take {factor:.3g}x, beyond {MIN_ZOOM:g}..{MAX_ZOOM:g}): check that "
                        "the image holds the kind of objects this model segments"
                    )
                )
            elif ratio and measured:  # a model of object size (nuclei): no pixel size to give
                typed = f"{round(measured / ratio / factor, 1):g}"  # the training size / factor
                tried = " ('auto object size' did not fix it here)" if auto else ""
                measure = "" if auto else _measure_hint(auto)
                remedies.append(
                    Remedy(
                        f"rescale the image by {factor:.2f}: {{set_diameter}}"
                        f"{_in_all(zoom)}{tried}{measure}",
                        diameter=typed,
                    )
                )
            else:
                remedies.append(
                    Remedy(
                        f"rescale the image by {factor:.2f} ({{rescale}}) so objects match "
                        f"the training size{_in_all(zoom)}{_measure_hint(auto) if sized else ''}",
                        factor=f"{factor:.2f}",
                    )
                )
        elif not shifted and not specks and (not noisy or len(reasons) > 1):
            remedies.append(
                Remedy(
                    "{check_scale}; if they already match, {fine_tune} on a few labelled "
                    # not "the highest-disagreement ones": the blocks it points to are
                    # ranked by the deepest head's doubt (label_next.label_here_next)
                    "regions of this image (where the model is least sure: {regions})"
                )
            )
    elif ratio is not None and not 1 / SIZE_HINT <= ratio <= SIZE_HINT:
        # within the natural spread of the training images, so no warning; still worth a try
        # (after auto object size: the measured diameter on the image's own grid, as
        # --diameter takes it)
        diameter = float(signals.get("object_diameter") or 0.0) / zoom
        remedies.append(
            Remedy(
                f"objects are {ratio:.2f}x the training size: try "
                f"{{{'try_diameter' if auto else 'auto_size'}}} and compare",
                diameter=f"{diameter:.0f}",
            )
        )
    return bool(reasons), reasons, remedies


#: What to do about an image noisier than the model tolerates. Not a blur: on the CT model
#: a Gaussian blur is a shift of its own (native scans lost 0.13-0.19 mean Dice with one
#: of 0.7-1 px, and a blur recovered 40 HU of noise only to 0.50, from 0.78 native).
NOISE_REMEDY = (
    "{fine_tune} on a few labelled regions of this image, so the model learns its noise; "
    "or acquire it with less noise (a longer exposure, more frames averaged, a "
    "standard-dose protocol)"
)


def _intensity_shift(
    signals: Mapping[str, float | None], thresholds: Mapping[str, float]
) -> tuple[str, Remedy] | None:
    """The reason and remedy for an image whose classes read off the training's intensities
    (:func:`image_signals.intensity_signals`), or None.

    Only a model calibrated for it has the limit (``intensity_shift``, with its classes'
    training medians: the shipped CT model). Air tells the causes apart: a contrast phase
    brightens the organs and leaves air at -1000 HU; values shifted as a whole (a
    RescaleIntercept missing, wrong or applied twice) move the air with them.
    """
    shift, limit = signals.get("intensity_shift"), thresholds.get("intensity_shift")
    tissue = signals.get("tissue_shift")
    if shift is None and tissue is not None and abs(tissue) > TISSUE_SHIFT_LIMIT:
        # no class found to measure (organs shifted below the window): the histogram's peaks
        pairs = zip(_PEAK_WORDS, TISSUE_PEAKS_HU, strict=True)
        peaks = ", ".join(f"{w} {p + tissue:+.0f}" for w, p in pairs)
        return (
            f"its histogram's air, fat and soft tissue peaks read {tissue:+.0f} HU from where "
            f"Hounsfield units put them ({peaks} HU): the values are shifted as a whole, so "
            "the model's organs fall outside its intensity window",
            _shift_remedy(tissue),
        )
    if shift is None or limit is None or abs(shift) <= limit:
        return None
    air = signals.get("air_shift")
    ct = "air_shift" in signals  # a window in Hounsfield units
    unit = " HU" if ct else ""
    per_class = ", ".join(
        f"{key[len('shift_') :]} {value:+.0f}"
        for key, value in signals.items()
        if key.startswith("shift_") and value is not None
    )
    measured = f"its classes read {shift:+.0f}{unit} from the training data's ({per_class})"
    moved = air is not None and air * shift > 0 and abs(air - shift) < max(limit, abs(shift) / 2)
    if ct and (moved or (air is None and abs(shift) > CONTRAST_MAX)):
        # air reads -1000 +- 15 HU between scanners, the organs differ between patients:
        # their mean, to 10 HU; 1024 exactly when that is near (a scanner's stored values)
        by = (air + shift) / 2 if moved and air is not None else shift
        seen = f"its air {air:+.0f} HU from -1000" if moved else "more than any contrast agent"
        return (
            f"{measured}, {seen}: the values are shifted as a whole, not Hounsfield units as "
            "the model reads them",
            _shift_remedy(by),
        )
    air_words = " with its air in place" if air is not None else ""
    if shift > 0 and ct:
        return (
            f"{measured}{air_words}: the scan looks contrast-enhanced (organs brightened by "
            "an injected contrast agent), which the model's training data was not",
            Remedy(
                "{fine_tune} on a few labelled slices of this scan (or of scans of the same "
                "contrast phase), so the model learns its organs' brightness; if the scan has "
                "no contrast, check its values (a wrong RescaleIntercept shifts them)"
            ),
        )
    return (
        f"{measured}{air_words}: {'darker' if shift < 0 else 'brighter'} than the model's "
        "training data",
        Remedy(
            "check the image's values (for CT: Hounsfield units, air -1000, fat -100, liver "
            "about 50); if they are right, {fine_tune} on a few labelled slices of this image"
        ),
    )


#: A shift of the histogram's peaks (:func:`image_signals.tissue_shift`, HU) beyond which a
#: CT in which the model finds nothing is told its values are shifted; within
#: :data:`TISSUE_IN_PLACE` they are Hounsfield units as the model reads them. The whole
#: scan's native slices read 0 or -10 (air, fat and soft tissue differ by 10-30 HU
#: between patients and scanners).
TISSUE_SHIFT_LIMIT = 100.0
TISSUE_IN_PLACE = 50.0
_PEAK_WORDS = ("air", "fat", "soft tissue")


def _shift_remedy(by: float) -> Remedy:
    """Subtract (``by`` > 0) or add about ``by`` HU, to 10 (1024 exactly when near it: a
    scanner's stored offset), and where such a shift comes from."""
    amount = f"about {abs(round(by, -1)):.0f}"
    if abs(abs(by) - HU_OFFSET) < 50:
        by, amount = float(np.sign(by) * HU_OFFSET), f"{HU_OFFSET}"
    step = f"subtract {amount} from" if by > 0 else f"add {amount} to"
    return Remedy(
        f"{step} the image so that air reads -1000 HU (its RescaleSlope / RescaleIntercept "
        "were missing, wrong or applied twice), or open the DICOM series, whose "
        "RescaleIntercept the reader applies"
    )


def values_shifted(
    signals: Mapping[str, float | None], thresholds: Mapping[str, float]
) -> Remedy | None:
    """The remedy for a CT whose values are shifted as a whole (or read off the training's
    intensities), or None: :func:`disagreement.check_prediction` puts it before the "found
    nothing" remedies, which would otherwise send the user to the image's scale."""
    found = _intensity_shift(signals, thresholds)
    return None if found is None else found[1]


def no_classes_here(
    signals: Mapping[str, float | None], class_names: Sequence[str]
) -> ImageCheck | None:
    """The verdict on a CT in which the model finds none of its classes while the image's
    air, fat and soft tissue sit where Hounsfield units put them (or None): these slices hold
    none of its organs (the pelvis, the chest), which is no fault of the image.

    Why: the whole scan's pelvic slices (the model's own training slices) were called
    unlike the training data, with a remedy naming their intensities and their scale.
    """
    tissue = signals.get("tissue_shift")
    if tissue is None or abs(tissue) > TISSUE_IN_PLACE:
        return None
    what = ", ".join(n for n in class_names if n != "background")
    return ImageCheck(
        signals=dict(signals),
        unlike_training=False,
        reasons=[
            f"no {what} of this model here: it found none, and the image's air, fat and soft "
            f"tissue read {tissue:+.0f} HU from where Hounsfield units put them, so these "
            "slices likely hold none of its organs (e.g. the pelvis or the chest)"
        ],
        remedies=[
            f"if they do hold {what}, check the image's pixel size (the model's is in its card)"
        ],
    )


def _smaller_than_training(gain: float | None, thresholds: Mapping[str, float]) -> bool:
    """Do the depths agree clearly better at full size than at half size, beyond what the
    model's native images do (its calibrated ``scale_gain_low``)?

    Why: objects smaller than in training (an EM stack at 8 nm for a 4 nm model) shrink
    further at half size, and the heads lose them there; at full size they still agree, so
    no other signal fired (EM at 0.5x: IoU 0.709 -> 0.59, scale gain 0.51-0.77 against
    0.89-1.18 native; benchmarks/bench_depth.py warning). Only a calibrated model has the
    limit. A CT at 6 mm is not caught: its slices are too small for the half-size pass.
    """
    low = thresholds.get("scale_gain_low")
    return gain is not None and low is not None and gain < low


def _noisier_than_tolerated(
    signals: Mapping[str, float | None], thresholds: Mapping[str, float]
) -> str:
    """The reason an image is too noisy for the model, or "" (see :mod:`noise`).

    Only a model measured for it has a ``noise`` limit (the shipped ones,
    ``benchmarks/bench_noise.py``): there is no level that suits every model.
    """
    value, limit = signals.get("noise"), thresholds.get("noise")
    if value is None or limit is None or value <= limit:
        return ""
    return (
        f"noise {_above(value, limit)}: the image is noisier than this model tolerates "
        "(its labels change on images this noisy), and its depths agree on the wrong answer"
    )


def _in_all(zoom: float) -> str:
    """Says that a remedy's rescale replaces the one this run used (not on top of it)."""
    return "" if zoom == 1.0 else f" (a rescale in all: this run resampled it by {zoom:.2f})"


def _measure_hint(auto: bool) -> str:
    """The remedy's second choice (a :class:`Remedy` template's tail): let the objects be
    measured, or, when this result already ran with ``rescale="auto"`` (measured, or
    skipped for want of objects), give their size by hand."""
    if auto:
        return "; 'auto object size' did not fix it here: {give_diameter}"
    return "; or let the objects be measured: {auto_size}"


def calibrate(
    native: Sequence[Mapping[str, float | None]], margin: float = 1.5
) -> dict[str, float]:
    """Thresholds for one model: ``margin`` x the largest value of each signal on images
    like its training data (a held-back validation split, native, never the test split).

    Stored in the checkpoint as ``metrics["image_check"]``; :func:`check_image` reads it.
    """
    out: dict[str, float] = {}
    for name in ("depth_disagreement", "flip_disagreement", "uncertain_fraction"):
        values = [float(v) for r in native if (v := r.get(name)) is not None]
        if values:
            out[name] = round(margin * max(values), 4)
    # ratios near 1 on native images: 1.1x the largest (the half-size ratio: its 95th
    # percentile, as a native image whose small objects merge at half size is an outlier
    # that would otherwise switch the signal off), never below the fallback
    for name, quantile in (("scale_gain", 100), ("half_size_ratio", 95)):
        ratios = [float(v) for r in native if (v := r.get(name)) is not None]
        if ratios:
            high = float(np.percentile(ratios, quantile))
            out[name] = round(max(THRESHOLDS[name], 1.1 * high), 3)
    # the low side (objects smaller than in training): 1/1.1 of the smallest native gain,
    # never above the cap (a model whose natives all agree better at half size)
    gains = [float(v) for r in native if (v := r.get("scale_gain")) is not None]
    if gains:
        out["scale_gain_low"] = round(min(SCALE_GAIN_LOW_CAP, min(gains) / 1.1), 3)
    return out


#: No contrast phase brightens organs by more than this (HU, their median): a shift beyond it
#: with no air in the image to tell is called values shifted as a whole.
CONTRAST_MAX = 250.0
#: The least ``intensity_shift`` limit (model units: HU for CT) :func:`calibrate_intensity`
#: sets. One scan's own spread says little of another patient's: non-contrast livers differ
#: by 10-20 HU between people, while a portal-venous phase brightens the organs by 40-200.
INTENSITY_FLOOR = 30.0


def calibrate_intensity(
    images: Sequence[np.ndarray],
    labels: Sequence[np.ndarray],
    class_names: Sequence[str],
    native_shifts: Sequence[float] = (),
    margin: float = 1.5,
) -> dict[str, float]:
    """The intensity references of a model of fixed units (a CT window): per class, the median
    of its training images' values under its training labels (``intensity_<class>``, ids
    ``1..K`` in ``class_names`` order after the background), and the limit ``intensity_shift``:
    ``margin`` x the largest ``native_shifts`` (the check's measure on native images), never
    below :data:`INTENSITY_FLOOR`. Stored in ``metrics["image_check"]``.
    """
    out: dict[str, float] = {}
    for k, name in enumerate(class_names):
        if name == "background":
            continue
        values = [np.asarray(i)[np.asarray(t) == k] for i, t in zip(images, labels, strict=True)]
        pooled = np.concatenate(values) if values else np.zeros(0)
        if pooled.size:
            out[f"intensity_{name}"] = round(float(np.median(pooled)), 1)
    spread = max((abs(float(v)) for v in native_shifts), default=0.0)
    out["intensity_shift"] = round(max(INTENSITY_FLOOR, margin * spread), 1)
    return out


def calibrate_on_tiles(
    model: Any, tiles: Sequence[tuple[np.ndarray, Any]], data_config: DataConfig, device: Any
) -> dict[str, float]:
    """Thresholds for a model just trained, from its validation tiles (normalised images).

    Why: without its own calibration a model is judged by the shipped models' thresholds,
    which say nothing about it: a model trained for 100 steps is uncertain everywhere, and
    the README's example warned "unlike the model's training data" on its own training
    image (uncertain fraction 0.46 > 0.17). The tiles are pooled as one native image (a
    whole-image check averages over its pixels too), and no limit is set below
    :data:`THRESHOLDS`; signals that need a half-size pass keep the fallback.
    """
    import torch

    c = model.config.num_classes

    def probabilities(x: torch.Tensor) -> dict[int, np.ndarray]:
        logits = {d: v.float() for d, v in model(x).items()}
        act = (lambda v: torch.sigmoid(v)[:, 0]) if c == 1 else (lambda v: v.softmax(1))
        return {d: act(v).cpu().numpy() for d, v in logits.items()}

    records = []
    with torch.no_grad():
        for start in range(0, len(tiles), 4):
            x = torch.from_numpy(np.stack([t[0] for t in tiles[start : start + 4]])).to(device)
            probs = probabilities(x)
            flipped = probabilities(torch.flip(x, dims=(-1,)))[max(probs)]
            for i in range(len(x)):
                one = {d: p[i] for d, p in probs.items()}
                mirror = np.flip(flipped[i], axis=-1)
                records.append(image_signals(one, mirror, model.config, data_config))
    pooled = {
        name: float(np.mean(values))
        for name in ("depth_disagreement", "flip_disagreement", "uncertain_fraction")
        if (values := [float(v) for r in records if (v := r.get(name)) is not None])
    }
    # a few validation tiles are no measure of how quiet this model can be on its own
    # data: never stricter than the fallback (only a model that is less sure than the
    # shipped ones gets wider limits)
    return {k: max(v, THRESHOLDS[k]) for k, v in calibrate([pooled]).items()} if pooled else {}
