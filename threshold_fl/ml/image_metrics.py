"""Image similarity for judging gradient-inversion reconstructions.

Images are (H, W) grey or (C, H, W) channels first (as torch holds them), values in
[0, *data_range*] (1.0 by default).  Structural scores on colour images are computed per
channel and averaged over the channels.

:func:`ssim` is the structural similarity index of Wang, Bovik, Sheikh and Simoncelli
(IEEE TIP 2004): local means, variances and covariance under a normalised Gaussian
window (7x7, sigma 1.5; on images smaller than 7 pixels the window shrinks to the
largest odd size that fits), constants C1 = (K1 L)^2 and C2 = (K2 L)^2 with K1 = 0.01,
K2 = 0.03 and L the data range, and the mean of the SSIM map over the positions where
the window lies fully inside the image (no padding, so borders are not invented).
Identical images give 1; the value is symmetric and at most 1.

The paper's other scores:

* :func:`psnr`: 10 log10(L^2 / MSE) in dB, infinite for identical images.
* :func:`uqi`: the universal quality index of Wang and Bovik (2002), SSIM without its
  constants on an 8x8 uniform window (``sewar.full_ref.uqi``).
* :func:`ms_ssim`: multi-scale SSIM (Wang, Simoncelli and Bovik 2003) by
  ``sewar.full_ref.msssim`` with our 7x7 Gaussian window and **three** scales, weights
  0.0448, 0.2856, 0.3001 (the standard first three of five, renormalised to sum to 1).
  Five scales would halve a 32-pixel image down to 2 pixels; three (32, 16, 8 pixels)
  is the most at which a 7x7 window still fits.  Smaller images get fewer scales.
* :func:`vif`: pixel-domain visual information fidelity (VIF-p, Sheikh and Bovik 2006)
  with the reference code's windows (17, 9, 5, 3 pixels, sigma = size / 5) and visual
  noise variance 2 in 8-bit grey levels.  Written here, not taken from ``sewar.vifp``:
  its four scales need images of at least 41 pixels, and on smaller ones its last scales'
  'valid' convolutions silently swap image and window.  We keep the scales whose window
  fits (two at 32 pixels) and agree with sewar where all four fit (tests).
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import numpy.typing as npt

from threshold_fl.arrays import FloatArray
from threshold_fl.errors import ParameterError

__all__ = ["METRICS", "ms_ssim", "ms_ssim_scales", "mse", "psnr", "ssim", "uqi", "vif"]


K1 = 0.01
K2 = 0.03
WINDOW = 7
SIGMA = 1.5
UQI_WINDOW = 8
MS_SSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)
VIF_NOISE = 2.0  # variance of the visual noise, in 8-bit grey levels squared
_VIF_EPS = 1e-10


def _checked_image(image: object, what: str) -> FloatArray:
    if not isinstance(image, np.ndarray):
        raise ParameterError(f"{what} must be a numpy array, got {type(image).__name__}")
    if image.ndim not in (2, 3) or image.size == 0:
        raise ParameterError(f"{what} must be a non-empty 2-D grey image (H, W) or 3-D "
                             f"(C, H, W), got shape {image.shape}")
    if image.dtype.kind not in "fiu":
        raise ParameterError(f"{what} must hold real numbers, got dtype {image.dtype}")
    values = image.astype(np.float64)
    if not np.isfinite(values).all():
        raise ParameterError(f"{what} holds NaN or infinity")
    return values if values.ndim == 3 else values[np.newaxis]


def _checked_pair(a: object, b: object) -> tuple[FloatArray, FloatArray]:
    """Both images as (C, H, W) float64."""
    first, second = _checked_image(a, "first image"), _checked_image(b, "second image")
    if first.shape != second.shape:
        raise ParameterError(f"images must have the same shape, got {first.shape} and "
                             f"{second.shape}")
    return first, second


def _checked_range(data_range: object) -> float:
    if isinstance(data_range, bool) or not isinstance(data_range, int | float | np.floating):
        raise ParameterError(f"data_range must be a real number, got {data_range!r}")
    if not (math.isfinite(data_range) and data_range > 0):
        raise ParameterError(f"data_range must be finite and > 0 (1.0 for images in [0, 1]), "
                             f"got {data_range!r}")
    return float(data_range)


def _gaussian_window(side: int, sigma: float = SIGMA) -> FloatArray:
    offsets = np.arange(side, dtype=np.float64) - (side - 1) / 2
    line = np.exp(-(offsets**2) / (2 * sigma**2))
    window: FloatArray = np.outer(line, line)
    normalised: FloatArray = window / window.sum()
    return normalised


def _local_mean(image: FloatArray, window: FloatArray) -> FloatArray:
    """Weighted mean at every position where the window fits entirely ('valid')."""
    patches = np.lib.stride_tricks.sliding_window_view(image, window.shape)
    means: FloatArray = np.einsum("ijkl,kl->ij", patches, window)
    return means


def _ssim_plane(first: FloatArray, second: FloatArray, data_range: float) -> float:
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


def ssim(a: npt.NDArray[np.generic], b: npt.NDArray[np.generic], *,
         data_range: float = 1.0) -> float:
    """Mean SSIM of two images of equal shape (per channel, then the channels' mean)."""
    first, second = _checked_pair(a, b)
    limit = _checked_range(data_range)
    return float(np.mean([_ssim_plane(x, y, limit) for x, y in zip(first, second,
                                                                    strict=True)]))


def mse(a: npt.NDArray[np.generic], b: npt.NDArray[np.generic]) -> float:
    """Mean squared difference of two images of equal shape."""
    first, second = _checked_pair(a, b)
    return float(np.mean((first - second) ** 2))


def psnr(a: npt.NDArray[np.generic], b: npt.NDArray[np.generic], *,
         data_range: float = 1.0) -> float:
    """Peak signal-to-noise ratio in dB; ``inf`` for identical images."""
    limit = _checked_range(data_range)
    error = mse(a, b)
    return math.inf if error == 0.0 else 10.0 * math.log10(limit**2 / error)


def _channels_last(image: FloatArray) -> FloatArray:
    moved: FloatArray = np.ascontiguousarray(image.transpose(1, 2, 0))
    return moved


def uqi(a: npt.NDArray[np.generic], b: npt.NDArray[np.generic]) -> float:
    """Universal quality index (8x8 uniform window; scale-free, so no data range)."""
    from sewar.full_ref import uqi as sewar_uqi

    first, second = _checked_pair(a, b)
    if min(first.shape[1:]) < UQI_WINDOW + 1:
        raise ParameterError(f"UQI needs images of at least {UQI_WINDOW + 1} pixels a side, "
                             f"got {first.shape[1:]}")
    return float(sewar_uqi(_channels_last(first), _channels_last(second), ws=UQI_WINDOW))


def ms_ssim_scales(side: int) -> int:
    """How many MS-SSIM scales an image with short side *side* gets (see module doc)."""
    scales = 1
    while scales < len(MS_SSIM_WEIGHTS) and side // 2**scales >= WINDOW:
        scales += 1
    return scales


def ms_ssim(a: npt.NDArray[np.generic], b: npt.NDArray[np.generic], *,
            data_range: float = 1.0) -> float:
    """Multi-scale SSIM: three scales at 32 pixels (see module doc)."""
    from sewar.full_ref import msssim

    first, second = _checked_pair(a, b)
    limit = _checked_range(data_range)
    if min(first.shape[1:]) < WINDOW:
        raise ParameterError(f"MS-SSIM needs images of at least {WINDOW} pixels a side, "
                             f"got {first.shape[1:]}")
    weights = np.array(MS_SSIM_WEIGHTS[:ms_ssim_scales(min(first.shape[1:]))])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a silent cap on the scales would be a bug here
        value = msssim(_channels_last(first), _channels_last(second),
                       weights=list(weights / weights.sum()), ws=WINDOW, MAX=limit)
    return float(np.real(value))


def _valid_filter(image: FloatArray, window: FloatArray) -> FloatArray:
    # The windows are symmetric, so correlation and convolution agree.
    return _local_mean(image, window)


def _vif_plane(reference: FloatArray, distorted: FloatArray) -> float:
    numerator = denominator = 0.0
    for scale in range(1, 5):
        side = 2 ** (5 - scale) + 1
        window = _gaussian_window(side, side / 5.0)
        if min(reference.shape) < side:
            break  # the scale's window no longer fits (see module doc)
        if scale > 1:  # smooth with this scale's window, then halve
            reference = _valid_filter(reference, window)[::2, ::2]
            distorted = _valid_filter(distorted, window)[::2, ::2]
            if min(reference.shape) < side:
                break
        mean_r, mean_d = _valid_filter(reference, window), _valid_filter(distorted, window)
        var_r = np.maximum(_valid_filter(reference**2, window) - mean_r**2, 0.0)
        var_d = np.maximum(_valid_filter(distorted**2, window) - mean_d**2, 0.0)
        covariance = _valid_filter(reference * distorted, window) - mean_r * mean_d
        # The reference code's special cases, in its order.
        gain = covariance / (var_r + _VIF_EPS)
        noise = var_d - gain * covariance
        flat = var_r < _VIF_EPS
        gain[flat], noise[flat], var_r[flat] = 0.0, var_d[flat], 0.0
        blank = var_d < _VIF_EPS
        gain[blank], noise[blank] = 0.0, 0.0
        negative = gain < 0
        noise[negative], gain[negative] = var_d[negative], 0.0
        noise = np.maximum(noise, _VIF_EPS)
        numerator += float(np.sum(np.log10(1.0 + gain**2 * var_r / (noise + VIF_NOISE))))
        denominator += float(np.sum(np.log10(1.0 + var_r / VIF_NOISE)))
    if denominator <= 0:
        raise ParameterError("VIF is undefined against a reference image without contrast")
    return numerator / denominator


def vif(reference: npt.NDArray[np.generic], distorted: npt.NDArray[np.generic], *,
        data_range: float = 1.0) -> float:
    """VIF-p of *distorted* against *reference* (not symmetric; 1 for identical images)."""
    first, second = _checked_pair(reference, distorted)
    if min(first.shape[1:]) < 17:
        raise ParameterError(f"VIF needs images of at least 17 pixels a side, got "
                             f"{first.shape[1:]}")
    # The visual noise variance is stated for 8-bit grey levels.
    scale = 255.0 / _checked_range(data_range)
    return float(np.mean([_vif_plane(x * scale, y * scale)
                          for x, y in zip(first, second, strict=True)]))


#: Every score by name, as the privacy evaluation reports them (higher is better for all
#: but MSE).
METRICS = ("ssim", "ms_ssim", "uqi", "vif", "psnr", "mse")
