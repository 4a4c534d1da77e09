"""Real colour photographs cut into small patches: the CIFAR-shaped victims of the
privacy evaluation, with nothing downloaded.

scikit-image ships eight real colour photographs inside its wheel (``skimage.data``:
an astronaut, a cat, a coffee cup, a rocket launch, the Hubble deep field, a retina, a
stained tissue section and a motorcycle).  :func:`load_photos` takes each one's centre
square, scales it (area averaging) to twice the patch size and cuts it into four patches,
so the default gives 32 distinct 32x32 RGB images in [0, 1].  Patches are dealt round
robin over the photographs: the first eight come from eight different photographs.

Labels are arbitrary (patch ``i`` gets ``i % classes``): a gradient-inversion victim only
needs *some* label, and the attacks infer it from the gradient.
"""

from __future__ import annotations

import functools

import numpy as np
import torch

from threshold_fl._checks import checked_int
from threshold_fl.ml.data import ClientData

__all__ = ["PHOTOS", "load_photos"]

#: The colour photographs bundled in scikit-image's wheel, by loader name.
PHOTOS: tuple[str, ...] = ("astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field",
                           "retina", "immunohistochemistry", "stereo_motorcycle")
_PATCHES_PER_PHOTO = 4  # a 2x2 grid


@functools.cache
def _square(name: str) -> torch.Tensor:
    """Photograph *name*'s centre square as (3, S, S) float64 in [0, 1], read once."""
    from skimage import data

    raw = getattr(data, name)()
    image = np.asarray(raw[0] if isinstance(raw, tuple) else raw)  # stereo: left view
    height, width = image.shape[:2]
    edge = min(height, width)
    top, left = (height - edge) // 2, (width - edge) // 2
    square = image[top:top + edge, left:left + edge, :3].astype(np.float64) / 255.0
    return torch.from_numpy(square.transpose(2, 0, 1).copy())


def _photo(name: str, side: int) -> torch.Tensor:
    # Area averaging: each output pixel is the mean of the input pixels it covers, an
    # anti-aliased downscale (bilinear sampling would alias fine texture).
    scaled = torch.nn.functional.interpolate(_square(name).unsqueeze(0), size=(side, side),
                                             mode="area")
    return scaled[0].clamp(0.0, 1.0)


def load_photos(*, count: int = len(PHOTOS) * _PATCHES_PER_PHOTO, image_size: int = 32,
                classes: int = 100) -> ClientData:
    """*count* patches (count, 3, image_size, image_size) float32 in [0, 1], with labels."""
    limit = len(PHOTOS) * _PATCHES_PER_PHOTO
    checked_int(count, "count", 1, limit)
    checked_int(image_size, "image_size", 4, 256)
    checked_int(classes, "classes", 2)
    patches = []
    for number in range(count):
        photo = _photo(PHOTOS[number % len(PHOTOS)], 2 * image_size)
        row, column = divmod(number // len(PHOTOS), 2)
        patches.append(photo[:, row * image_size:(row + 1) * image_size,
                             column * image_size:(column + 1) * image_size].float())
    labels = torch.arange(count, dtype=torch.long) % classes
    return ClientData(torch.stack(patches), labels)
