import cv2
import numpy as np
import pytest

from emojich.segment.contour import ContourConfig, border_background, contour_alpha
from emojich.segment.metrics import boundaries, boundary_f_score, iou, mask_scores
from emojich.segment.stickers import make_sticker

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


def outlined_field(side=512, outline=8):
    """A dark 8 px outline around a white field, as a white flag, sign or balloon is drawn."""
    image = np.full((side, side, 3), 255, np.uint8)
    image[96:416, 96:416] = 30
    image[96 + outline : 416 - outline, 96 + outline : 416 - outline] = 255
    return image


def test_white_field_inside_an_outline_is_opaque_up_to_the_outline():
    image = outlined_field()
    alpha = contour_alpha(image)
    field = alpha[104:408, 104:408]
    assert (field == 255).sum() == 304 * 304  # no seam just inside the outline
    assert (alpha[96:416, 96:416] == 255).all()
    assert (alpha[:96] == 0).all() and (alpha[:, 416:] == 0).all()


def test_outlined_white_eye_near_the_edge_of_a_face_stays_opaque():
    image = np.full((512, 512, 3), 255, np.uint8)
    cv2.circle(image, (256, 256), 200, (255, 200, 0), -1, lineType=cv2.LINE_AA)  # yellow face, no outline
    # A white eye in a 4 px dark outline, 2 px from the face's edge: its white lies 6 px from the
    # background, well within the graded band (10 px at 512 px).
    eye = (256 + 156, 256)
    cv2.circle(image, eye, 40, WHITE, -1, lineType=cv2.LINE_AA)
    cv2.circle(image, eye, 40, (20, 20, 20), 4, lineType=cv2.LINE_AA)
    alpha = contour_alpha(image)
    rows, columns = np.ogrid[:512, :512]
    inside_eye = (columns - eye[0]) ** 2 + (rows - eye[1]) ** 2 <= 37**2
    assert (alpha[inside_eye] == 255).all(), (alpha[inside_eye] < 255).sum()
    # The face's own anti-aliased edge is still graded, and the background still cut.
    edge = alpha[256, 452:460]
    assert ((edge > 0) & (edge < 255)).any() and alpha[256, 470] == 0 and alpha[0, 0] == 0


def _on_black(image):
    sticker = np.asarray(make_sticker(image, contour_alpha(image), side=image.shape[0])).astype(np.float32)
    return sticker[..., :3] * (sticker[..., 3:] / 255), sticker[..., 3]


def _balloon(side, outline):
    """The halo test's anti-aliased red disc; with an outline width, a dark ring around a white field."""
    image = np.full((side, side, 3), 255, np.uint8)
    centre, radius = (side // 2, side // 2), side * 5 // 16
    if outline:
        cv2.circle(image, centre, radius, (20, 20, 20), -1, lineType=cv2.LINE_AA)
        cv2.circle(image, centre, radius - outline, WHITE, -1, lineType=cv2.LINE_AA)
    else:
        cv2.circle(image, centre, radius, (220, 30, 40), -1, lineType=cv2.LINE_AA)
    return image, centre, radius


@pytest.mark.parametrize(("side", "outline"), [(128, 0), (512, 8)])
def test_on_black_the_outer_edge_shows_no_halo_and_the_field_no_seam(side, outline):
    """Outside the drawing nothing is lighter than the drawing's own edge colour (no white ring);
    with an outline, the white field inside is opaque right up to it (no see-through seam)."""
    image, (cx, cy), radius = _balloon(side, outline)
    on_black, alpha = _on_black(image)
    rows, columns = np.ogrid[:side, :side]
    distance = np.sqrt((columns - cx) ** 2 + (rows - cy) ** 2)
    outer = distance > radius - 1.5  # the outer edge and everything beyond it
    # the disc's colour (220, 30, 40) or the outline's (20, 20, 20) bounds green and blue, with
    # rounding room
    assert on_black[outer][:, 1].max() <= 45 and on_black[outer][:, 2].max() <= 55
    assert alpha.max() == 255 and (alpha == 0).any()
    assert (alpha[distance < radius - outline - 1] == 255).all()


def test_white_cloud_without_an_outline_is_cut_as_before():
    """A white cloud on white with no outline, shaded grey underneath: nothing blocks the band,
    so the white body is background (the rule stays) and all of the grey shade is graded by
    coverage, depth / depth of the shade's colour."""
    image = np.full((256, 256, 3), 255, np.uint8)
    for centre, radius in [((96, 120), 40), ((140, 100), 50), ((180, 124), 36)]:
        cv2.circle(image, centre, radius, (248, 248, 252), -1, lineType=cv2.LINE_AA)  # near-white body
    shade = (150, 160, 175)  # depth 105
    cv2.ellipse(image, (140, 158), (70, 7), 0, 0, 360, shade, -1, lineType=cv2.LINE_AA)
    alpha = contour_alpha(image)
    background = border_background(image)
    assert alpha[100, 140] == 0 and alpha[0, 0] == 0  # the white body is background
    depth = 255 - image.min(axis=-1).astype(np.float32)
    expected = np.rint(np.clip(depth / 105, 0, 1) * 255).astype(np.uint8)
    assert ((alpha > 0) & (alpha < 255)).sum() > 100
    np.testing.assert_array_equal(alpha[~background], expected[~background])


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
