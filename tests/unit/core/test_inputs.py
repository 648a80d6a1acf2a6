"""Person-box checks shared by `prepare` (findings) and `predict` (errors): each bad box or
score gives its field, a reason and a message that starts at the field."""

from __future__ import annotations

import pytest

from sdpose.core.inputs import BoxError, checked_box, checked_score, is_number

pytestmark = pytest.mark.unit


def test_a_good_box_comes_back_as_floats() -> None:
    box = checked_box([1, 2.5, 30, 40])
    assert box == [1.0, 2.5, 30.0, 40.0] and all(type(value) is float for value in box)
    assert checked_box([-5, -5, 1e-3, 1e-3]) == [-5.0, -5.0, 1e-3, 1e-3]  # its image decides


@pytest.mark.parametrize(
    ("bbox", "reason", "message"),
    [
        ([1, 2, 3], "malformed", "'bbox' must be 4 numbers x, y, w, h: [1, 2, 3]"),
        ((1, 2, 3, 4), "malformed", "'bbox' must be 4 numbers x, y, w, h: (1, 2, 3, 4)"),
        ("1 2 3 4", "malformed", "'bbox' must be 4 numbers"),
        ([1, 2, 3, True], "malformed", "'bbox' must hold numbers, found True"),
        ([1, 2, "3", 4], "malformed", "'bbox' must hold numbers, found '3'"),
        ([1, 2, float("nan"), 4], "non_finite", "'bbox' holds NaN or infinity"),
        ([1, 2, float("inf"), 4], "non_finite", "'bbox' holds NaN or infinity"),
        ([1, 2, 10**400, 4], "non_finite", "'bbox' holds NaN or infinity"),
        ([1, 2, 0, 4], "empty", "'bbox' width and height must be positive: [1, 2, 0, 4]"),
        ([1, 2, 3, -4], "empty", "'bbox' width and height must be positive"),
    ],
)
def test_each_bad_box_has_its_reason(bbox, reason, message) -> None:
    with pytest.raises(BoxError) as caught:
        checked_box(bbox)
    assert caught.value.field == "bbox" and caught.value.reason == reason
    assert str(caught.value).startswith(message)


def test_scores_must_be_finite_numbers() -> None:
    assert checked_score(1) == 1.0 and type(checked_score(1)) is float
    for score, reason in ((True, "malformed"), ("0.9", "malformed"), (None, "malformed"),
                          (float("nan"), "non_finite"), (float("-inf"), "non_finite")):  # fmt: skip
        with pytest.raises(BoxError, match=r"^'score' ") as caught:
            checked_score(score)
        assert (caught.value.field, caught.value.reason) == ("score", reason)


def test_bool_is_not_a_number() -> None:
    assert is_number(0) and is_number(0.5) and is_number(float("nan"))
    assert not is_number(True) and not is_number("1") and not is_number(None)
