"""``python -m napari_unetpp.cli`` (as under ``torchrun -m napari_unetpp.cli train ...``)."""

import sys

from . import main

sys.exit(main())
