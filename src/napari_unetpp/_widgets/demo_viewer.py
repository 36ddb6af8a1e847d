"""The viewer the CLI's `demo` opens: GUI code lives here, so the engine never imports napari."""

from __future__ import annotations

from typing import Any

import napari


def show_demo(
    image: Any, labels: Any, truth: Any, name: str, meta: dict[str, Any]
) -> None:  # pragma: no cover - needs a display
    """Open napari with the sample, its ground truth (hidden) and the UNet++ labels; block."""
    scale = meta.get("scale")
    viewer = napari.Viewer(title=f"napari-unetpp demo: {name}")
    viewer.add_image(image, name=name, scale=scale)
    viewer.add_labels(truth, name=f"{name} ground truth", visible=False, scale=scale)
    viewer.add_labels(labels, name=f"{name} UNet++ labels", scale=scale)
    napari.run()
