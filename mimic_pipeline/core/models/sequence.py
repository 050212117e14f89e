"""Sequence-length tools of the MIMIC study, chosen per run as a `Variant`.

- 1-D average pooling of each image's vision tokens by a factor k before they enter the LM
  (fewer tokens, less detail);
- the pixel control: down-sample each image by k and up-sample it back (the same detail is lost,
  the token count is unchanged), which separates "less detail" from "shorter sequence";
- stitching: the item's images pasted into one image, so the model sees a single image.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from PIL import Image

POOL_FACTORS = (1, 2, 4, 8)


@dataclass(frozen=True)
class Variant:
    pool: int = 1  # vision-token pooling factor
    pixel_control: int = 1  # down-up pixel resampling factor (1: off)
    stitch: bool = False

    def __post_init__(self):
        for name, value in (("pool", self.pool), ("pixel_control", self.pixel_control)):
            if value not in POOL_FACTORS:
                raise ValueError(f"variant {name}={value}: choose one of {', '.join(map(str, POOL_FACTORS))}")
        if self.pool > 1 and self.pixel_control > 1:
            raise ValueError("pooling and the pixel control are alternatives: set one of them, not both")

    @property
    def name(self) -> str:
        parts = [f"pool{self.pool}" if self.pixel_control == 1 else f"pixels{self.pixel_control}"]
        return "-".join(parts + (["stitch"] if self.stitch else []))

    @classmethod
    def parse(cls, name: str) -> Variant:
        """Inverse of `name`: 'pool4', 'pixels4', 'pool1-stitch'."""
        kwargs: dict = {}
        for part in name.split("-"):
            if part == "stitch":
                kwargs["stitch"] = True
            elif part.startswith("pool") and part[4:].isdigit():
                kwargs["pool"] = int(part[4:])
            elif part.startswith("pixels") and part[6:].isdigit():
                kwargs["pixel_control"] = int(part[6:])
            else:
                raise ValueError(f"unknown variant {name!r}: use poolK, pixelsK or ...-stitch (K in 1, 2, 4, 8)")
        return cls(**kwargs)


def pool_tokens(features: torch.Tensor, factor: int) -> torch.Tensor:
    """Average each run of `factor` consecutive tokens of one image (T, D) -> (ceil(T / factor), D)."""
    if factor == 1:
        return features
    return F.avg_pool1d(features.T[None], kernel_size=factor, stride=factor, ceil_mode=True)[0].T


def pixel_control(image: Image.Image, factor: int) -> Image.Image:
    """Down-sample by `factor` and back up to the original size (bilinear both ways)."""
    if factor == 1:
        return image
    w, h = image.size
    small = image.resize((max(1, w // factor), max(1, h // factor)), Image.Resampling.BILINEAR)
    return small.resize((w, h), Image.Resampling.BILINEAR)


def stitch(images: list[Image.Image]) -> Image.Image:
    """Paste the images row by row into a near-square grid (ceil(sqrt(n)) columns), black where empty."""
    cols = math.ceil(math.sqrt(len(images)))
    rows = math.ceil(len(images) / cols)
    w = max(im.size[0] for im in images)
    h = max(im.size[1] for im in images)
    canvas = Image.new("RGB", (cols * w, rows * h))
    for i, im in enumerate(images):
        canvas.paste(im.convert("RGB"), ((i % cols) * w, (i // cols) * h))
    return canvas


def apply_to_images(images: list[Image.Image], variant: Variant) -> list[Image.Image]:
    images = [pixel_control(im, variant.pixel_control) for im in images]
    return [stitch(images)] if variant.stitch and len(images) > 1 else images
