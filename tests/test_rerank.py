"""Verification by local features (vpm/core/rerank.py) and search regions (vpm/core/images.py): pure functions, no catalog."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from vpm.core import rerank
from vpm.core.images import MIN_BOX_SIDE, Box, InvalidBox, box_from_percent, check_box, crop_box, outline_box, parse_box

from synthetic import shopper_view, textured


def test_keypoints_are_bounded_in_number_and_size():
    big = textured(1, size=(2400, 1800))

    features = rerank.extract(big)

    assert 0 < len(features) <= rerank.MAX_KEYPOINTS
    assert max(features.width, features.height) == rerank.FRAME_SIDE  # found on a 512 px frame, not 2400 px
    assert features.descriptors.dtype == np.uint8 and features.descriptors.shape == (len(features), 128)
    assert features.points.dtype == np.float32 and features.points.shape == (len(features), 2)


def test_a_small_photo_is_never_upscaled_for_its_keypoints():
    features = rerank.extract(textured(2, size=(200, 120)))

    assert (features.width, features.height) == (200, 120)


def test_keypoints_survive_a_round_trip_through_bytes():
    features = rerank.extract(textured(3))

    again = rerank.LocalFeatures.from_bytes(*features.to_bytes(), features.width, features.height)

    np.testing.assert_array_equal(again.points, features.points)
    np.testing.assert_array_equal(again.descriptors, features.descriptors)


def test_mismatched_stored_keypoints_are_refused():
    features = rerank.extract(textured(3))
    points, descriptors = features.to_bytes()

    with pytest.raises(ValueError, match="keypoints but"):
        rerank.LocalFeatures.from_bytes(points[:8], descriptors, features.width, features.height)


def test_a_blank_photo_has_no_keypoints_and_verifies_nothing():
    blank = rerank.extract(Image.new("RGB", (300, 300), "white"))

    assert len(blank) == 0
    assert rerank.verify(blank, rerank.extract(textured(4))) == rerank.NO_MATCH


def test_another_photo_of_the_same_product_is_verified_and_another_product_is_not():
    product = textured(5)
    same = rerank.verify(rerank.extract(shopper_view(product, 1)), rerank.extract(product))
    other = rerank.verify(rerank.extract(shopper_view(product, 1)), rerank.extract(textured(6)))

    assert same.inliers >= 30 and same.bonus > 0
    assert other.inliers < rerank.MIN_INLIERS and other.bonus == 0


def test_the_bonus_is_capped_so_verification_only_reorders_close_calls():
    huge = rerank.Verification(10_000, np.zeros((0, 4), np.float32))

    assert huge.bonus == pytest.approx(rerank.INLIER_WEIGHT * rerank.MAX_INLIERS_COUNTED)
    assert huge.bonus <= 0.1


def test_rerank_moves_the_verified_candidate_first():
    product = textured(7)
    query = rerank.extract(shopper_view(product, 2))
    candidates = [rerank.extract(textured(8)), rerank.extract(product), None]

    outcome = rerank.rerank([0.80, 0.78, 0.77], query, candidates)

    assert outcome.order[0] == 1 and outcome.changed
    assert outcome.inliers[1] >= rerank.MIN_INLIERS and outcome.inliers[2] == 0  # no keypoints: no bonus


def test_rerank_keeps_the_order_when_nothing_is_verified():
    outcome = rerank.rerank([0.9, 0.8], None, [None, None])

    assert outcome.order == [0, 1] and not outcome.changed and outcome.inliers == [0, 0]


def test_why_this_match_draws_both_photos_side_by_side():
    product = textured(9)

    png, inliers = rerank.draw_matches(shopper_view(product, 3), product)

    drawing = Image.open(io.BytesIO(png))
    assert drawing.format == "PNG"
    assert drawing.width > 2 * 250 and inliers >= rerank.MIN_INLIERS


# ------------------------------------------------------------------------------------------------ regions


@pytest.mark.parametrize("value", ["10,20,30,40", " 10, 20 ,30,40 ", [10, 20, 30, 40], (10, 20, 30, 40)])
def test_a_box_is_read_from_text_or_a_list(value):
    assert parse_box(value) == Box(10, 20, 30, 40)


@pytest.mark.parametrize("value", ["10,20,30", "a,b,c,d", [1, 2, 3, 4.5], [True, 2, 3, 4], 12, "1,2,3,4,5", ""])
def test_a_malformed_box_says_what_a_box_is(value):
    with pytest.raises(InvalidBox, match=r"x,y,w,h|whole number"):
        parse_box(value)


@pytest.mark.parametrize(
    ("box", "why"),
    [
        (Box(-1, 0, 50, 50), "outside the photo"),
        (Box(0, 0, MIN_BOX_SIDE - 1, 50), "at least"),
        (Box(0, 0, 50, 0), "at least"),
        (Box(60, 0, 50, 50), "past the photo"),
        (Box(0, 0, 100, 101), "past the photo"),
        (Box(0, 0, 100, 16), None),
    ],
)
def test_a_box_must_lie_inside_the_photo_and_be_big_enough(box, why):
    if why is None:
        assert check_box(box, 100, 100) == box
        return
    with pytest.raises(InvalidBox, match=why):
        check_box(box, 100, 100)


def test_a_strip_of_a_box_is_refused_so_resizes_stay_bounded():
    with pytest.raises(InvalidBox, match="strip"):
        check_box(Box(0, 0, 2000, 16), 4000, 100)


def test_crop_box_cuts_exactly_the_region():
    image = textured(10, size=(120, 80))

    part = crop_box(image, Box(10, 20, 30, 40))

    assert part.size == (30, 40)
    assert part.getpixel((0, 0)) == image.getpixel((10, 20))


def test_a_box_from_the_pages_percent_sliders_is_clipped_and_checked():
    assert box_from_percent(200, 100, 10, 20, 50, 50) == Box(20, 20, 100, 50)
    assert box_from_percent(200, 100, 90, 0, 50, 100) == Box(180, 0, 20, 100)  # clipped at the right edge
    with pytest.raises(InvalidBox, match="at least"):
        box_from_percent(200, 100, 99, 0, 50, 100)  # 2 px wide once clipped
    with pytest.raises(InvalidBox, match="between 0 and 100"):
        box_from_percent(200, 100, -5, 0, 50, 50)


def test_the_live_preview_outlines_the_region_on_a_small_picture():
    big = textured(11, size=(1600, 1200))

    preview = Image.open(io.BytesIO(outline_box(big, Box(100, 100, 400, 300))))

    assert max(preview.size) <= 280 and preview.format == "WEBP"
    with pytest.raises(InvalidBox):
        outline_box(big, Box(1500, 0, 400, 300))
