import pytest

from crack.classes import class_names_by_label, class_role, detect_positive_class
from crack.errors import UserError


@pytest.mark.parametrize(
    ("names", "positive"),
    [
        (["Negative", "Positive"], "Positive"),
        (["crack", "no_crack"], "crack"),
        (["cracked", "uncracked"], "cracked"),
        # Alphabetically "cracked" < "not_cracked": an ImageFolder-style index would make the
        # intact class label 1. Detection must still pick "cracked".
        (["cracked", "not_cracked"], "cracked"),
        (["0_no_crack", "1_crack"], "1_crack"),
        (["NoCrack", "Crack"], "Crack"),
        (["intact", "cracks"], "cracks"),
        (["Without Crack", "With Crack"], "With Crack"),
    ],
)
def test_detects_crack_class(names, positive):
    assert detect_positive_class(names) == positive
    assert detect_positive_class(list(reversed(names))) == positive


def test_cracked_not_cracked_labels_are_not_alphabetical():
    names = ["cracked", "not_cracked"]
    assert class_names_by_label(names, detect_positive_class(names)) == ["not_cracked", "cracked"]


@pytest.mark.parametrize(
    "names", [["crack_a", "crack_b"], ["cats", "dogs"], ["Positive", "photos"]]
)
def test_ambiguous_or_unknown_names_stop_with_the_fix(names):
    with pytest.raises(UserError, match="data.positive_class=") as error:
        detect_positive_class(names)
    for name in names:
        assert name in str(error.value)


def test_explicit_positive_class_wins_and_is_checked():
    assert detect_positive_class(["cats", "dogs"], "dogs") == "dogs"
    with pytest.raises(UserError, match="not one of the class folders"):
        detect_positive_class(["cats", "dogs"], "birds")


def test_needs_two_classes():
    with pytest.raises(UserError, match="exactly 2"):
        detect_positive_class(["Positive"])
    with pytest.raises(UserError, match="exactly 2"):
        detect_positive_class(["Positive", "Negative", "Unsure"])


def test_roles():
    assert class_role("not cracked") == "negative"
    assert class_role("non-crack") == "negative"
    assert class_role("Positive") == "positive"
    assert class_role("images") is None
