import numpy as np
import pytest

from workers.ml.metrics import classification_metrics, expected_calibration_error


def test_metrics_on_a_hand_checked_example() -> None:
    labels = ["cat", "dog", "bird"]
    y_true = np.array([0, 0, 1, 1, 2, 2])
    # predictions: 0, 1, 1, 1, 2, 0
    probs = np.array([[0.9, 0.05, 0.05], [0.2, 0.7, 0.1], [0.1, 0.8, 0.1],
                      [0.3, 0.6, 0.1], [0.1, 0.1, 0.8], [0.6, 0.2, 0.2]])
    m = classification_metrics(y_true, probs, labels)
    assert m["accuracy"] == pytest.approx(4 / 6)
    assert m["confusion_matrix"] == [[1, 1, 0], [0, 2, 0], [1, 0, 1]]
    assert m["per_class"]["cat"] == {"precision": 0.5, "recall": 0.5, "f1": 0.5, "support": 2}
    assert m["per_class"]["dog"]["precision"] == pytest.approx(2 / 3)
    assert m["per_class"]["dog"]["recall"] == 1.0
    assert m["per_class"]["bird"]["f1"] == pytest.approx(2 * 1.0 * 0.5 / 1.5)
    assert m["macro_f1"] == pytest.approx((0.5 + 0.8 + 2 / 3) / 3)


def test_perfectly_calibrated_bins_have_zero_ece() -> None:
    confidence = np.array([0.75] * 4)
    correct = np.array([True, True, True, False])
    ece, bins = expected_calibration_error(confidence, correct)
    assert ece == pytest.approx(0.0)
    assert bins[0]["count"] == 4


def test_overconfidence_shows_in_ece() -> None:
    ece, _ = expected_calibration_error(np.array([0.95] * 10), np.array([True] * 5 + [False] * 5))
    assert ece == pytest.approx(0.45)


@pytest.mark.parametrize(
    ("y_true", "probs", "message"),
    [
        (np.array([], dtype=int), np.zeros((0, 2)), "empty"),
        (np.array([0, 3]), np.full((2, 2), 0.5), "outside"),
        (np.array([0, 1]), np.full((2, 3), 1 / 3), r"must be \[2, 2\]"),
    ],
)
def test_bad_inputs_fail_clearly(y_true: np.ndarray, probs: np.ndarray, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        classification_metrics(y_true, probs, ["a", "b"])
