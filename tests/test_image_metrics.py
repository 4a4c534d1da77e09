"""The paper's image scores (threshold_fl/ml/image_metrics.py) on colour images: SSIM per
channel, PSNR, UQI, MS-SSIM and VIF, against known values and against sewar."""

from __future__ import annotations

import itertools
import math

import numpy as np
import numpy.typing as npt
import pytest
from sewar import full_ref

from threshold_fl.errors import ParameterError
from threshold_fl.ml.image_metrics import (
    MS_SSIM_WEIGHTS,
    ms_ssim,
    ms_ssim_scales,
    mse,
    psnr,
    ssim,
    uqi,
    vif,
)
from threshold_fl.ml.photos import load_photos

Image = npt.NDArray[np.float64]


@pytest.fixture(scope="module")
def photos() -> Image:
    return load_photos(count=10).images.double().numpy()


def _noisy(image: Image, level: float, rng: np.random.Generator) -> Image:
    noisy: Image = np.clip(image + rng.normal(0, level, image.shape), 0.0, 1.0)
    return noisy


def test_identical_images_score_perfectly(photos: Image) -> None:
    image = photos[0]
    assert ssim(image, image) == pytest.approx(1.0)
    assert ms_ssim(image, image) == pytest.approx(1.0)
    assert uqi(image, image) == pytest.approx(1.0)
    assert vif(image, image) == pytest.approx(1.0, abs=1e-9)
    assert mse(image, image) == 0.0 and psnr(image, image) == math.inf


def test_ssim_of_a_colour_image_is_the_mean_over_its_channels(photos: Image,
                                                              rng: np.random.Generator) -> None:
    truth = photos[1]
    noisy = _noisy(truth, 0.1, rng)
    channels = [ssim(truth[c], noisy[c]) for c in range(3)]
    assert len({round(v, 6) for v in channels}) == 3  # the channels really differ
    assert ssim(truth, noisy) == pytest.approx(np.mean(channels), rel=1e-12)


def test_psnr_has_its_analytic_value() -> None:
    a = np.zeros((3, 8, 8))
    assert psnr(a, a + 0.1) == pytest.approx(20.0)  # 10 log10(1 / 0.01)
    assert psnr(a, a + 25.5, data_range=255.0) == pytest.approx(20.0)


@pytest.mark.parametrize("gain", [0.5, 2.0])
def test_uqi_of_a_scaled_image_is_the_analytic_value(gain: float,
                                                     rng: np.random.Generator) -> None:
    # For y = a x, correlation is 1 and UQI = (2a / (1 + a^2)) for luminance times the
    # same for contrast, in every window.
    image = 0.2 + 0.6 * rng.random((3, 16, 16))
    expected = (2 * gain / (1 + gain**2)) ** 2
    assert uqi(image, gain * image) == pytest.approx(expected, rel=1e-9)


def test_scores_agree_with_sewar(photos: Image, rng: np.random.Generator) -> None:
    truth = photos[2]
    noisy = _noisy(truth, 0.08, rng)
    last = truth.transpose(1, 2, 0), noisy.transpose(1, 2, 0)
    assert uqi(truth, noisy) == pytest.approx(full_ref.uqi(*last), rel=1e-12)
    weights = np.array(MS_SSIM_WEIGHTS[:3])
    expected = full_ref.msssim(*last, weights=list(weights / weights.sum()), ws=7, MAX=1.0)
    assert ms_ssim(truth, noisy) == pytest.approx(float(np.real(expected)), rel=1e-12)
    # VIF: where sewar's four scales fit (41 pixels and more) the two agree.
    big = load_photos(count=2, image_size=48).images.double().numpy()[1]
    distorted = _noisy(big, 0.08, rng)
    reference = full_ref.vifp(big.transpose(1, 2, 0) * 255, distorted.transpose(1, 2, 0) * 255)
    assert vif(big, distorted) == pytest.approx(reference, rel=1e-9)


def test_ms_ssim_uses_three_scales_at_32_pixels() -> None:
    assert [ms_ssim_scales(side) for side in (7, 14, 28, 32, 56, 112)] == [1, 2, 3, 3, 4, 5]


def test_scores_fall_as_noise_grows(photos: Image, rng: np.random.Generator) -> None:
    truth = photos[3]
    noise = rng.normal(size=truth.shape)
    rows = [[ssim(truth, x), ms_ssim(truth, x), uqi(truth, x), vif(truth, x), psnr(truth, x)]
            for x in (np.clip(truth + level * noise, 0, 1) for level in (0.02, 0.1, 0.3))]
    for better, worse in itertools.pairwise(rows):
        assert all(b > w for b, w in zip(better, worse, strict=True))
    assert vif(truth, photos[4]) < 0.2 and ms_ssim(truth, photos[4]) < 0.5


def test_vif_rewards_contrast_enhancement(photos: Image) -> None:
    # A known property of VIF (Sheikh and Bovik 2006): it exceeds 1 for a linear contrast
    # stretch without noise, unlike SSIM.
    truth = photos[5] * 0.5 + 0.25
    stretched = np.clip((truth - 0.5) * 1.5 + 0.5, 0, 1)
    assert vif(truth, stretched) > 1.0 > ssim(truth, stretched)


@pytest.mark.parametrize(("function", "side", "message"), [
    (uqi, 8, "UQI needs"), (ms_ssim, 6, "MS-SSIM needs"), (vif, 16, "VIF needs")])
def test_too_small_images_are_refused(function: object, side: int, message: str) -> None:
    image = np.zeros((3, side, side))
    with pytest.raises(ParameterError, match=message):
        function(image, image)  # type: ignore[operator]


def test_vif_refuses_a_reference_without_contrast() -> None:
    flat = np.full((1, 32, 32), 0.5)
    with pytest.raises(ParameterError, match="without contrast"):
        vif(flat, flat)

