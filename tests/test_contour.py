import cv2
import numpy as np
import pytest

from emojich.segment.contour import ContourConfig, border_background, contour_alpha
from emojich.segment.metrics import boundaries, boundary_f_score, iou, mask_scores

WHITE = (255, 255, 255)


def _canvas(side=96):
    return np.full((side, side, 3), 255, np.uint8)


def white_eyed_face():
    image = _canvas()
    cv2.circle(image, (48, 48), 40, (0, 200, 255), -1)  # yellow face (BGR order is irrelevant here)
    cv2.circle(image, (48, 48), 40, (0, 0, 0), 2)
    cv2.circle(image, (34, 38), 8, WHITE, -1)  # white eyes
    cv2.circle(image, (62, 38), 8, WHITE, -1)
    cv2.rectangle(image, (32, 60), (64, 68), WHITE, -1)  # white teeth
    return image


def ring():
    image = _canvas()
    cv2.circle(image, (48, 48), 30, (200, 40, 40), 10)  # a closed band around a white hole
    return image


def white_flag():
    image = _canvas()
    image[20:77, 20:77] = 30  # a dark 3 px outline with a white field inside
    image[23:74, 23:74] = 255
    return image


@pytest.mark.parametrize(
    ("image", "inside"),
    [
        (white_eyed_face(), [(38, 34), (38, 62), (64, 48)]),  # eyes and teeth (row, column)
        (ring(), [(48, 48)]),  # the enclosed hole stays opaque, by design
        (white_flag(), [(48, 48), (30, 30)]),
    ],
)
def test_interior_white_stays_opaque_and_border_white_goes(image, inside):
    alpha = contour_alpha(image)
    for row, column in inside:
        assert alpha[row, column] == 255
    for row, column in [(0, 0), (0, 95), (95, 0), (95, 95), (5, 48)]:
        assert alpha[row, column] == 0


def test_background_mask_matches_the_drawn_shape():
    image = white_flag()
    expected_foreground = np.zeros(image.shape[:2], bool)
    expected_foreground[20:77, 20:77] = True
    assert iou(~border_background(image), expected_foreground) == 1.0


def test_pure_white_is_fully_transparent_and_no_white_fully_opaque():
    assert (contour_alpha(_canvas()) == 0).all()
    rng = np.random.default_rng(0)
    coloured = rng.integers(0, 200, (40, 50, 3), dtype=np.uint8)
    assert (contour_alpha(coloured) == 255).all()


def test_white_only_inside_a_frame_touching_the_border_stays():
    image = np.zeros((32, 32, 3), np.uint8)
    image[8:24, 8:24] = 255  # white square not connected to the border
    assert (contour_alpha(image) == 255).all()


def test_antialiased_edge_gets_graded_alpha():
    image = _canvas(64)
    image[:, 32:] = 0  # black right half
    image[:, 31] = 128  # a half-covered column at the edge
    image[:, 30] = 245  # a faint fringe that reads as near-white background
    alpha = contour_alpha(image)
    assert (alpha[:, 31] == 127).all()  # (255 - 128) / (255 - 0) of coverage
    assert (alpha[:, 30] == 10).all()
    assert (alpha[:, 29] == 0).all() and (alpha[:, 40] == 255).all()


def test_pale_emoji_keeps_a_hard_cut():
    image = _canvas(64)
    image[16:48, 16:48] = 230  # pale grey: too close to white to estimate coverage from
    alpha = contour_alpha(image)
    assert set(np.unique(alpha)) == {0, 255}


def test_threshold_is_a_parameter():
    image = _canvas(32)
    image[8:24, 8:24] = 235
    assert contour_alpha(image, ContourConfig(white_threshold=230))[16, 16] == 0
    assert contour_alpha(image, ContourConfig(white_threshold=240))[16, 16] == 255


# -- metrics ----------------------------------------------------------------------------------------


def test_iou_identical_disjoint_and_hand_computed():
    a = np.zeros((10, 10), bool)
    a[0:4, 0:4] = True  # 16 px
    b = np.zeros((10, 10), bool)
    b[2:6, 2:6] = True  # 16 px, overlapping a in a 2x2 = 4 px square
    c = np.zeros((10, 10), bool)
    c[6:, 6:] = True
    assert iou(a, a) == 1.0
    assert iou(a, c) == 0.0
    assert iou(a, b) == pytest.approx(4 / 28)
    assert iou(np.zeros((4, 4)), np.zeros((4, 4))) == 1.0
    np.testing.assert_allclose(iou(np.stack([a, a]), np.stack([a, b])), [1.0, 4 / 28])


def test_boundary_f_score():
    square = np.zeros((40, 40), bool)
    square[10:30, 10:30] = True
    assert boundary_f_score(square, square) == 1.0
    shifted = np.roll(square, 1, axis=1)
    assert boundary_f_score(square, shifted, tolerance=1) == 1.0  # within tolerance
    far = np.roll(square, 8, axis=1)
    assert boundary_f_score(square, far, tolerance=2) < 0.6
    assert boundary_f_score(square, np.zeros_like(square)) == 0.0
    assert boundary_f_score(np.zeros_like(square), np.zeros_like(square)) == 1.0


def test_boundaries_exclude_the_image_frame_and_batch_beyond_opencv_channel_limit():
    full = np.ones((1, 8, 8), bool)
    assert not boundaries(full).any()
    square = np.zeros((300, 20, 20), bool)
    square[:, 5:15, 5:15] = True
    assert boundaries(square).sum(axis=(1, 2)).tolist() == [36] * 300  # 10x10 ring of 1 px
    scores = mask_scores(square, square)
    assert scores == {"iou": 1.0, "boundary_f": 1.0}
