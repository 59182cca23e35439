"""The client's answer classes against ``openapi.yaml``: each has exactly its schema's
properties (plus the few fields documented as extras), so a change to the API shows
up here."""

import dataclasses
from pathlib import Path

import pytest
import yaml

import exemplar
from exemplar.models import ApiObject

SPEC = yaml.safe_load((Path(__file__).resolve().parents[3] / "openapi.yaml").read_text())

#: Fields the API sends outside the class's schema: a streamed prediction's position,
#: and the secret in the answer that created a key.
EXTRAS = {exemplar.Prediction: {"index"}, exemplar.Key: {"key"}}

CLASSES = [
    cls
    for cls in vars(exemplar).values()
    if isinstance(cls, type) and issubclass(cls, ApiObject) and cls is not ApiObject
]


def resolve(pointer: str):
    node = SPEC
    for part in pointer.lstrip("#/").split("/"):
        node = node[part.replace("~1", "/").replace("~0", "~")]
    while "$ref" in node:
        node = resolve(node["$ref"])
    return node


def test_every_answer_class_is_checked():
    assert len(CLASSES) == 14


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
def test_fields_are_the_schemas_properties(cls):
    schema = resolve(cls.schema)
    properties = set(schema["properties"])
    fields = {f.name for f in dataclasses.fields(cls)}
    assert fields - EXTRAS.get(cls, set()) == properties
    required = {f.name for f in dataclasses.fields(cls) if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING}
    assert required <= set(schema.get("required", [])), f"{cls.__name__} requires what the API may leave out"


def test_nested_objects_are_built():
    job = exemplar.EvaluationJob.from_json(
        {
            "id": "eval-1",
            "state": "complete",
            "progress": {"done": 2, "of": 2},
            "created_at": 1,
            "updated_at": 2,
            "result": {
                "n": 2,
                "accuracy": 0.5,
                "macro_f1": 0.33,
                "per_label": [{"label": "a", "precision": 1, "recall": 0.5, "f1": 0.67, "support": 2}],
                "labels": ["a", "b"],
                "confusion": [[1, 1], [0, 0]],
                "from_a_newer_server": True,
            },
        }
    )
    assert job.result is not None
    assert job.result.per_label[0].label == "a"
    assert job.result.to_pandas().loc["a", "support"] == 2
