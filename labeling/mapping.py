"""Pure mapping between hitl's label sets and Label Studio's configs and results."""

from __future__ import annotations

from xml.sax.saxutils import quoteattr

FROM_NAME = "label"
TO_NAME = "image"


class ResultRejected(ValueError):
    """An annotation result hitl will not store as a label; the message says why."""


def label_config(task_type: str, labels: list[str]) -> str:
    """Choices over an Image for classification; RectangleLabels for detection."""
    if task_type == "classification":
        options = "".join(f"<Choice value={quoteattr(label)}/>" for label in labels)
        control = (f'<Choices name="{FROM_NAME}" toName="{TO_NAME}" choice="single-radio" showInline="true" '
                   f'required="true">{options}</Choices>')
    elif task_type == "detection":
        options = "".join(f"<Label value={quoteattr(label)}/>" for label in labels)
        control = f'<RectangleLabels name="{FROM_NAME}" toName="{TO_NAME}">{options}</RectangleLabels>'
    else:
        raise ValueError(f"no Label Studio config for task type {task_type!r}")
    return f'<View><Image name="{TO_NAME}" value="$image" zoom="true"/>{control}</View>'


def choice_result(label: str) -> list[dict]:
    """A classification result (for pre-annotations): one choice."""
    return [{"from_name": FROM_NAME, "to_name": TO_NAME, "type": "choices", "value": {"choices": [label]}}]


def choice_from_result(result: object, labels: list[str]) -> str:
    """The single label chosen in an annotation result, or ResultRejected saying what is wrong."""
    if not isinstance(result, list):
        raise ResultRejected(f"result is {type(result).__name__}, not a list of regions")
    choices = [r for r in result if isinstance(r, dict) and r.get("type") == "choices"]
    ours = [r for r in choices if r.get("from_name") == FROM_NAME and r.get("to_name") == TO_NAME]
    if not ours:
        names = sorted({str(r.get("from_name")) for r in choices})
        raise ResultRejected(f"no '{FROM_NAME}' choice in the result" + (f" (found {', '.join(names)})" if names else ""))
    if len(ours) > 1:
        raise ResultRejected(f"{len(ours)} '{FROM_NAME}' choice regions; expected one")
    value = ours[0].get("value")
    picked = value.get("choices") if isinstance(value, dict) else None
    if not isinstance(picked, list) or len(picked) != 1 or not isinstance(picked[0], str):
        raise ResultRejected(f"expected exactly one chosen label, got {picked!r}")
    if picked[0] not in labels:
        raise ResultRejected(f"unknown choice {picked[0]!r}; the project's labels are {', '.join(labels)}")
    return picked[0]
