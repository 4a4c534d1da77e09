"""Image similarity for judging gradient-inversion reconstructions: SSIM and MSE.

:func:`ssim` is the structural similarity index of Wang, Bovik, Sheikh and Simoncelli
(IEEE TIP 2004) for 2-D grey images: local means, variances and covariance under a
normalised Gaussian window (7x7, sigma 1.5; on images smaller than 7 pixels the window
shrinks to the largest odd size that fits), constants C1 = (K1 L)^2 and C2 = (K2 L)^2
with K1 = 0.01, K2 = 0.03 and L the data range, and the mean of the SSIM map over the
positions where the window lies fully inside the image (no padding, so borders are
not invented).  Identical images give 1; the value is symmetric and at most 1.
"""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt

from threshold_fl.arrays import FloatArray
from threshold_fl.errors import ParameterError

__all__ = ["mse", "ssim"]


K1 = 0.01
K2 = 0.03
WINDOW = 7
SIGMA = 1.5


def _checked_image(image: object, what: str) -> FloatArray:
    if not isinstance(image, np.ndarray):
        raise ParameterError(f"{what} must be a numpy array, got {type(image).__name__}")
    if image.ndim != 2 or image.size == 0:
        raise ParameterError(f"{what} must be a non-empty 2-D grey image (H, W), got shape "
                             f"{image.shape}; squeeze channel axes first")
    if image.dtype.kind not in "fiu":
        raise ParameterError(f"{what} must hold real numbers, got dtype {image.dtype}")
    values = image.astype(np.float64)
    if not np.isfinite(values).all():
        raise ParameterError(f"{what} holds NaN or infinity")
    return values


def _checked_pair(a: object, b: object) -> tuple[FloatArray, FloatArray]:
    first, second = _checked_image(a, "first image"), _checked_image(b, "second image")
    if first.shape != second.shape:
        raise ParameterError(f"images must have the same shape, got {first.shape} and "
                             f"{second.shape}")
    return first, second


def _gaussian_window(side: int) -> FloatArray:
    offsets = np.arange(side, dtype=np.float64) - (side - 1) / 2
    line = np.exp(-(offsets**2) / (2 * SIGMA**2))
    window: FloatArray = np.outer(line, line)
    normalised: FloatArray = window / window.sum()
    return normalised


def _local_mean(image: FloatArray, window: FloatArray) -> FloatArray:
    """Weighted mean at every position where the window fits entirely ('valid')."""
    patches = np.lib.stride_tricks.sliding_window_view(image, window.shape)
    means: FloatArray = np.einsum("ijkl,kl->ij", patches, window)
    return means


def ssim(a: npt.NDArray[np.generic], b: npt.NDArray[np.generic], *,
         data_range: float = 1.0) -> float:
    """Mean SSIM of two grey images of equal shape; *data_range* is max - min possible."""
    first, second = _checked_pair(a, b)
    if isinstance(data_range, bool) or not isinstance(data_range, int | float | np.floating):
        raise ParameterError(f"data_range must be a real number, got {data_range!r}")
    if not (math.isfinite(data_range) and data_range > 0):
        raise ParameterError(f"data_range must be finite and > 0 (1.0 for images in [0, 1]), "
                             f"got {data_range!r}")
    side = min(WINDOW, *first.shape)
    side -= 1 - side % 2  # an odd window has a centre pixel
    window = _gaussian_window(side)
    c1, c2 = (K1 * data_range) ** 2, (K2 * data_range) ** 2
    mean_a, mean_b = _local_mean(first, window), _local_mean(second, window)
    # Clip tiny negative variances that cancellation leaves on flat patches.
    var_a = np.maximum(_local_mean(first * first, window) - mean_a**2, 0.0)
    var_b = np.maximum(_local_mean(second * second, window) - mean_b**2, 0.0)
    covariance = _local_mean(first * second, window) - mean_a * mean_b
    numerator = (2 * mean_a * mean_b + c1) * (2 * covariance + c2)
    denominator = (mean_a**2 + mean_b**2 + c1) * (var_a + var_b + c2)
    return float(np.mean(numerator / denominator))


def mse(a: npt.NDArray[np.generic], b: npt.NDArray[np.generic]) -> float:
    """Mean squared difference of two images (any real arrays of equal 2-D shape)."""
    first, second = _checked_pair(a, b)
    return float(np.mean((first - second) ** 2))
