"""Old home of ``normalization``, ``labels`` and ``patches``: names still imported from here.

Only for callers not yet moved (``cli.py``, ``files.py``); new code imports the
three modules directly.
"""

from .labels import guess_label_mode, num_output_channels
from .normalization import check_pair, looks_rgb, rgb_to_grey

__all__ = ["check_pair", "guess_label_mode", "looks_rgb", "num_output_channels", "rgb_to_grey"]
