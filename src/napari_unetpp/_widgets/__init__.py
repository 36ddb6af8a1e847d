"""Thin magicgui widgets of napari-unetpp (one per file); only this package imports Qt/napari."""
