"""DiT as the paper compares it (Sec. 4, Fig. 4): text and image tokens concatenated and processed by one
shared weight set, i.e. MM-DiT with a single weight set. The block code is MM-DiT's (`mmdit.py`)."""

from __future__ import annotations

from rfsweep.backbones.mmdit import MMDiT


class DiT(MMDiT):
    """MMDiT(weight_sets=1): same arguments and contract as `MMDiT`."""

    def __init__(self, *args, **kwargs):
        if kwargs.pop("weight_sets", 1) != 1:
            raise ValueError("DiT has one weight set; use mmdit for weight_sets=2 or 3")
        super().__init__(*args, weight_sets=1, **kwargs)
