"""A remedy in its reader's words: the command line's flags, or the Segment dock's fields.

Why a module of its own: :func:`image_check.judge` writes each remedy once, as a
template naming controls (``{set_diameter}``, ``{fine_tune}``...); the terminal and
``run.json`` read it with the command line's options, a dock user with the dock's
fields (:data:`CONTROLS`), and the dock showed "--diameter 36" to users who had typed
no command before the two were told apart.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

__all__ = ["Audience", "CONTROLS", "Remedy", "phrase", "phrased"]


#: Who reads a remedy: a command-line user ("cli", also ``run.json``) or a user of the
#: Segment or Train dock ("dock").
Audience = Literal["cli", "dock"]

#: The controls a remedy names, in each audience's words: the command line's options, the
#: Segment dock's own fields (its "Your image" panel, the Train dock). Why one table: each
#: remedy is written once (in :func:`image_check.judge`), and the dock showed the command line's
#: flags ("--diameter 36", "--rescale auto") to users who had typed no command.
CONTROLS: dict[str, dict[str, str]] = {
    "cli": {
        "set_diameter": "set the object diameter {diameter} px (--diameter {diameter})",
        "auto_size": "'auto object size' (--rescale auto)",
        "give_diameter": "give their diameter (--diameter D)",
        "try_diameter": "their diameter in pixels (--diameter {diameter})",
        "rescale": "--rescale {factor}, or give its pixel size: --pixel-size",
        "check_scale": "check the pixel size (--pixel-size; rescale so objects have the "
        "training size)",
        "fine_tune": "fine-tune (train --from)",
        "regions": "predict --disagreement ranks them",
        "sparse_mode": "give --label-mode sparse",
    },
    "dock": {
        "set_diameter": "type {diameter} in 'Object diameter (px)' (Your image panel)",
        "auto_size": "'auto object size'",
        "give_diameter": "type their diameter in 'Object diameter (px)'",
        "try_diameter": "'Object diameter (px)' {diameter}",
        "rescale": "type its true 'Pixel size' in the Your image panel",
        "check_scale": "check the image's scale in the Your image panel ('Pixel size', or "
        "'Object diameter (px)' for a model of object size) so objects have the training size",
        "fine_tune": "fine-tune in the Train / fine-tune UNet++ dock",
        "regions": "the 'label here next' layer numbers them",
        "sparse_mode": "choose Label mode 'sparse'",
    },
}


def phrase(template: str, audience: Audience, values: Mapping[str, str]) -> str:
    """``template`` with each ``{control}`` in ``audience``'s words (:data:`CONTROLS`)."""
    from string import Formatter

    named = {field for _, field, _, _ in Formatter().parse(template) if field}
    return template.format(**{n: CONTROLS[audience][n].format(**values) for n in named})


class Remedy(str):
    """A remedy: its text (this ``str``: the terminal, ``run.json``) names the command
    line's options; :meth:`phrased` gives the same sentence for the Segment dock."""

    template: str
    values: dict[str, str]

    def __new__(cls, template: str, **values: str) -> Remedy:
        # a plain text (no ``{control}``) is its own template: copies and unpickling pass
        # the str value back in, and ImageCheck's remedies may be plain strings
        self = super().__new__(cls, phrase(template, "cli", values))
        self.template, self.values = template, values
        return self

    def phrased(self, audience: Audience) -> str:
        return phrase(self.template, audience, self.values)


def phrased(remedy: str, audience: Audience) -> str:
    """Any remedy (a :class:`Remedy` or a plain text) in ``audience``'s words."""
    return remedy.phrased(audience) if isinstance(remedy, Remedy) else str(remedy)
