"""The API's answers as typed objects, one class per schema of ``openapi.yaml``
(``tests/test_models.py`` holds each class's fields equal to its schema's properties)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, ClassVar, Dict, Generic, List, Optional, Type, TypeVar

T = TypeVar("T", bound="ApiObject")
#: What a background job answers once complete.
R = TypeVar("R", bound="ApiObject")


class ApiObject:
    """Built from the API's JSON: keys the class does not know are left out, so that a
    newer server's extra fields do not break an older client."""

    #: Fields holding other API objects (or lists of them), by name.
    nested: ClassVar[Dict[str, Type["ApiObject"]]] = {}
    #: The schema in ``openapi.yaml`` this class follows.
    schema: ClassVar[str] = ""

    @classmethod
    def from_json(cls: Type[T], data: Dict[str, Any]) -> T:
        """The object for a JSON answer."""
        names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        values: Dict[str, Any] = {}
        for key, value in data.items():
            if key not in names:
                continue
            kind = cls.nested.get(key)
            if kind is not None and value is not None:
                value = [kind.from_json(v) for v in value] if isinstance(value, list) else kind.from_json(value)
            values[key] = value
        return cls(**values)  # type: ignore[call-arg]


@dataclass
class Model(ApiObject):
    """A loaded LLM, as ``GET /v1/models`` lists it."""

    schema: ClassVar[str] = "#/paths/~1v1~1models/get/responses/200/content/application~1json/schema/properties/data/items"
    id: str
    object: str = "model"
    created: int = 0
    owned_by: str = ""
    default: bool = False
    architecture: str = ""
    context_length: int = 0
    queued: int = 0


@dataclass
class Task(ApiObject):
    """A task as written, with the counts of its rows."""

    schema: ClassVar[str] = "#/components/schemas/Task"
    name: str
    labels: List[str] = field(default_factory=list)
    instruction: str = ""
    template: Dict[str, str] = field(default_factory=dict)
    separator: str = "\n\n"
    defaults: Optional[Dict[str, Any]] = None
    model: Optional[str] = None
    counts: Dict[str, int] = field(default_factory=dict)


@dataclass
class Row(ApiObject):
    """An annotated example or a pool item."""

    schema: ClassVar[str] = "#/components/schemas/Row"
    id: str
    text: str
    text_pair: Optional[str] = None
    label: Optional[str] = None


@dataclass
class Demonstration(ApiObject):
    """An example a prediction's prompt showed."""

    schema: ClassVar[str] = "#/components/schemas/Prediction/properties/demonstrations/items"
    id: str
    similarity: float


@dataclass
class Prediction(ApiObject):
    """One input's answer: its label (or output) with probabilities and demonstrations."""

    schema: ClassVar[str] = "#/components/schemas/Prediction"
    nested: ClassVar[Dict[str, Type[ApiObject]]] = {"demonstrations": Demonstration}
    demonstrations: List[Demonstration]
    prompt_tokens: int
    label: Optional[str] = None
    output: Optional[str] = None
    probabilities: Optional[Dict[str, float]] = None
    llm_probabilities: Optional[Dict[str, float]] = None
    vote_probabilities: Optional[Dict[str, float]] = None
    prompt: Optional[str] = None
    #: The input's position, on streamed predictions only.
    index: Optional[int] = None


@dataclass
class LabelScores(ApiObject):
    """One label's precision, recall and F1."""

    schema: ClassVar[str] = "#/components/schemas/Evaluation/properties/per_label/items"
    label: str
    precision: float
    recall: float
    f1: float
    support: int


@dataclass
class Evaluation(ApiObject):
    """An evaluation's table: accuracy, macro-F1, per-label scores, confusion matrix."""

    schema: ClassVar[str] = "#/components/schemas/Evaluation"
    nested: ClassVar[Dict[str, Type[ApiObject]]] = {"per_label": LabelScores}
    n: int
    accuracy: float
    macro_f1: float
    per_label: List[LabelScores]
    labels: List[str]
    confusion: List[List[int]]

    def to_pandas(self) -> Any:
        """The per-label table as a pandas DataFrame (needs pandas)."""
        import pandas as pd

        return pd.DataFrame([dataclasses.asdict(row) for row in self.per_label]).set_index("label")


@dataclass
class Job(ApiObject, Generic[R]):
    """A background job (evaluation, tuning): its state, progress and, once complete,
    its result."""

    id: str
    state: str
    progress: Dict[str, Any]
    created_at: int
    updated_at: int
    result: Optional[R] = None
    error: Optional[str] = None


@dataclass
class EvaluationJob(Job[Evaluation]):
    """A background evaluation, its progress and, once complete, its table."""

    schema: ClassVar[str] = "#/components/schemas/EvaluationJob"
    nested: ClassVar[Dict[str, Type[ApiObject]]] = {"result": Evaluation}


@dataclass
class TuneRow(ApiObject):
    """One combination of prediction options a tuning measured."""

    schema: ClassVar[str] = "#/components/schemas/TuneRow"
    k: int
    strategy: str
    order: str
    calibration: str
    vote_weight: float
    cached_demonstrations: bool
    accuracy: float
    macro_f1: float
    #: The model, when the grid compared models (else the task's own ran).
    model: Optional[str] = None


@dataclass
class Tuning(ApiObject):
    """A tuning's table, best first, and the defaults it stored on the task."""

    schema: ClassVar[str] = "#/components/schemas/TuningJob/properties/result"
    nested: ClassVar[Dict[str, Type[ApiObject]]] = {"table": TuneRow, "best": TuneRow}
    examples: int
    table: List[TuneRow]
    best: TuneRow
    defaults: Dict[str, Any]

    def to_pandas(self) -> Any:
        """The table as a pandas DataFrame (needs pandas)."""
        import pandas as pd

        return pd.DataFrame([dataclasses.asdict(row) for row in self.table])


@dataclass
class TuningJob(Job[Tuning]):
    """A background tuning, its progress and, once complete, its table."""

    schema: ClassVar[str] = "#/components/schemas/TuningJob"
    nested: ClassVar[Dict[str, Type[ApiObject]]] = {"result": Tuning}


@dataclass
class SelectedItem(ApiObject):
    """A pool item a selection chose, and whether it is annotated yet."""

    schema: ClassVar[str] = "#/components/schemas/Selection/properties/items/items"
    id: str
    text: str
    annotated: bool


@dataclass
class Selection(ApiObject):
    """The pool items a selective-annotation method chose, and its state."""

    schema: ClassVar[str] = "#/components/schemas/Selection"
    nested: ClassVar[Dict[str, Type[ApiObject]]] = {"items": SelectedItem}
    id: str
    method: str
    budget: int
    seed: int
    params: Dict[str, Any]
    state: str
    complete: bool
    items: List[SelectedItem]
    timings: Dict[str, float]
    progress: Optional[Dict[str, int]] = None
    error: Optional[str] = None
    next: Optional[str] = None


@dataclass
class Key(ApiObject):
    """An API key as the server knows it; ``key`` is set only when it was just made."""

    schema: ClassVar[str] = "#/components/schemas/Key"
    id: str
    name: str
    scope: str
    tasks: Optional[List[str]]
    created_at: int
    revoked_at: Optional[int] = None
    #: The secret itself, only in the answer that created it.
    key: Optional[str] = None
