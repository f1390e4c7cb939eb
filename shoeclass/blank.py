"""A cheap check, before the network, for photos with nothing in them (one flat colour).

A plain grey, black or white frame, a lens cap shot or an all-NaN array turned black gets
p(not footwear) of only 0.04-0.08 from the heads, which never saw such images, and with it a
tariff code. Here such a photo is refused instead: its luminance spread (the 99th minus the 1st
percentile on a 64×64 greyscale thumbnail) is under :data:`MIN_SPREAD` grey levels. On 1,500
random photos of the training data the smallest spread is 31 and the 1st percentile 79, so real
photos, even white-on-white catalogue shots, stay far above the limit.
"""
from __future__ import annotations

import numpy as np
from PIL import Image

__all__ = ["MIN_SPREAD", "blank_problem"]

MIN_SPREAD = 12  # grey levels of 255; JPEG noise on a flat frame stays under 4


def blank_problem(img: Image.Image) -> str | None:
    """Why ``img`` has no shoe in it (a sentence), or None when it has content."""
    grey = np.asarray(img.convert("L").resize((64, 64), Image.Resampling.BILINEAR), dtype=np.float32)  # (64, 64)
    lo, hi = np.percentile(grey, [1, 99])
    if hi - lo < MIN_SPREAD:
        return (f"no shoe in this photo: it is blank (one flat colour, brightness {np.median(grey):.0f}/255, "
                f"spread {hi - lo:.0f} < {MIN_SPREAD} grey levels)")
    return None
