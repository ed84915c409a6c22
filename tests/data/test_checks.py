"""The shared evaluation checks: images found, and label maps against the annotations' categories."""

import pytest

from spinenet.data.checks import check_images_found, label_map_difference


def test_images_found():
    assert check_images_found("a.json", 5, 5, "folder f") is None
    assert check_images_found("a.json", 5, 2, "folder f") == ("only 2 of the 5 images listed in a.json were found "
                                                             "in folder f; only those 2 are used")
    with pytest.raises(ValueError, match=r"none of the 5 images listed in a.json was found in folder f"):
        check_images_found("a.json", 5, 0, "folder f")
    with pytest.raises(ValueError, match=r"a.json lists no images"):
        check_images_found("a.json", 0, 0, "folder f")


def test_label_map_difference_shows_both_sides():
    assert label_map_difference({1: "a", 2: "b"}, {1: "a", 2: "b"}, "M", "D") is None
    assert label_map_difference({}, {1: "a"}, "M", "D") is None  # nothing to compare
    msg = label_map_difference({1: "a", 2: "b", 3: "c"}, {1: "b", 2: "a", 4: "d"}, "M", "D")
    assert "id 1: 'a' vs 'b'; id 2: 'b' vs 'a'; id 3: 'c' only in M; id 4: 'd' only in D" in msg
    assert "M (3 classes)" in msg and "D (3 categories)" in msg
    many = label_map_difference({i: f"x{i}" for i in range(20)}, {i: f"y{i}" for i in range(20)}, "M", "D")
    assert many.count(" vs ") == 8 and "(20 differences)" in many
