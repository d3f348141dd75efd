import xml.etree.ElementTree as ET

import pytest

from labeling.mapping import ResultRejected, choice_from_result, choice_result, label_config

LABELS = ["cat", "dog", 'say "hi" & <bye>']


def test_classification_config_is_choices_over_an_image() -> None:
    root = ET.fromstring(label_config("classification", LABELS))
    image = root.find("Image")
    choices = root.find("Choices")
    assert image.get("name") == "image" and image.get("value") == "$image"
    assert choices.get("name") == "label" and choices.get("toName") == "image"
    assert [c.get("value") for c in choices.findall("Choice")] == LABELS  # escaped, order kept


def test_detection_config_is_rectangle_labels() -> None:
    root = ET.fromstring(label_config("detection", ["car", "person"]))
    assert [label.get("value") for label in root.find("RectangleLabels").findall("Label")] == ["car", "person"]


def test_a_choice_round_trips() -> None:
    assert choice_from_result(choice_result("dog"), LABELS) == "dog"


@pytest.mark.parametrize(
    ("result", "message"),
    [
        ({"choices": ["dog"]}, "not a list"),
        ([], "no 'label' choice"),
        ([{"type": "choices", "from_name": "other", "to_name": "image", "value": {"choices": ["dog"]}}], "found other"),
        (choice_result("dog") + choice_result("cat"), "2 'label' choice regions"),
        ([{**choice_result("dog")[0], "value": {"choices": ["dog", "cat"]}}], "exactly one"),
        ([{**choice_result("dog")[0], "value": {}}], "exactly one"),
        (choice_result("zebra"), "unknown choice 'zebra'"),
    ],
)
def test_results_hitl_will_not_store(result, message: str) -> None:
    with pytest.raises(ResultRejected, match=message):
        choice_from_result(result, LABELS)
