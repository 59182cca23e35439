"""Exemplar's Python client: ``exemplar.Client(url, api_key=None)``.

Tasks, annotated examples and pools from any iterable or a pandas DataFrame, selective
annotation, evaluation and tuning jobs that wait with a progress bar, predictions, and
keys. Every failure is an :class:`ExemplarError` carrying the API's ``code``.
"""

from .client import Client
from .errors import (
    AuthenticationError,
    ConflictError,
    ExemplarError,
    InvalidRequestError,
    JobFailedError,
    NotFoundError,
    PermissionDeniedError,
    RateLimitError,
    ServerError,
    UnavailableError,
)
from .models import (
    Demonstration,
    Evaluation,
    EvaluationJob,
    Key,
    LabelScores,
    Model,
    Prediction,
    Row,
    SelectedItem,
    Selection,
    Task,
    Tuning,
    TuningJob,
    TuneRow,
)

__all__ = [
    "AuthenticationError",
    "Client",
    "ConflictError",
    "Demonstration",
    "Evaluation",
    "EvaluationJob",
    "ExemplarError",
    "InvalidRequestError",
    "JobFailedError",
    "Key",
    "LabelScores",
    "Model",
    "NotFoundError",
    "PermissionDeniedError",
    "Prediction",
    "RateLimitError",
    "Row",
    "SelectedItem",
    "Selection",
    "ServerError",
    "Task",
    "TuneRow",
    "Tuning",
    "TuningJob",
    "UnavailableError",
]
