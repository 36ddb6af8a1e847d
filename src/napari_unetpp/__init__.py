"""napari-unetpp: UNet++ segmentation for napari.

Importing the package loads neither torch nor Qt; import the engine modules
(``napari_unetpp.model``, ``.training``, ``.inference``...) where they are needed.
"""

__version__ = "0.1.0"
