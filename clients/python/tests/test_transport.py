"""The client's own behaviour, on a mock transport: batches, retries of busy answers
after ``Retry-After``, typed errors carrying the API's code, DataFrame input."""

import json

import httpx
import pandas as pd
import pytest

import exemplar


def recording(answers):
    """A transport answering ``answers`` in turn and recording each request's body."""
    seen = []

    def handle(request: httpx.Request) -> httpx.Response:
        seen.append((request.method, request.url.path, json.loads(request.content or b"null")))
        status, body, headers = answers[min(len(seen), len(answers)) - 1]
        return httpx.Response(status, json=body, headers=headers)

    return httpx.MockTransport(handle), seen


def client(transport):
    return exemplar.Client("http://exemplar.test", api_key="exm_x", backoff=0.0, transport=transport)


def test_busy_answers_are_retried_then_succeed():
    busy = (429, {"error": {"code": "overloaded", "message": "busy"}}, {"retry-after": "0"})
    transport, seen = recording([busy, busy, (201, {"ids": ["a"]}, {})])
    assert client(transport).add_examples("films", [{"text": "good", "label": "positive"}]) == ["a"]
    assert len(seen) == 3


def test_retries_give_up_with_the_apis_error():
    unavailable = (503, {"error": {"code": "database_unavailable", "message": "away", "param": None}}, {"retry-after": "0"})
    transport, seen = recording([unavailable])
    c = client(transport)
    c.retries = 2
    with pytest.raises(exemplar.UnavailableError) as raised:
        c.task("films")
    assert raised.value.code == "database_unavailable"
    assert len(seen) == 3


def test_refusals_are_typed_and_not_retried():
    refusal = (422, {"error": {"code": "invalid_value", "message": "`budget`: bad", "param": "budget"}}, {})
    transport, seen = recording([refusal])
    with pytest.raises(exemplar.InvalidRequestError) as raised:
        client(transport).select("films", "vote-k", 0)
    assert (raised.value.code, raised.value.param, raised.value.status) == ("invalid_value", "budget", 422)
    assert isinstance(raised.value, exemplar.ExemplarError)
    assert len(seen) == 1
    missing = (404, {"error": {"code": "task_not_found", "message": "no task"}}, {})
    transport, _ = recording([missing])
    with pytest.raises(exemplar.NotFoundError):
        client(transport).task("nope")


def test_a_dataframe_is_sent_in_batches_of_records():
    frame = pd.DataFrame(
        {
            "id": [1, 2, 3, 4, 5],
            "text": ["a", "b", "c", "d", "e"],
            "text_pair": ["x", None, "z", None, None],
            "label": [0, 1, 0, 1, 1],
            "unused": ["-"] * 5,
        }
    )
    transport, seen = recording([(201, {"ids": ["i", "j"]}, {})])
    ids = client(transport).add_examples("films", frame, batch_size=2)
    assert len(ids) == 6 and len(seen) == 3
    assert seen[0][2] == {"examples": [{"id": "1", "text": "a", "text_pair": "x", "label": "0"}, {"id": "2", "text": "b", "label": "1"}]}
    assert seen[2][2]["examples"] == [{"id": "5", "text": "e", "label": "1"}]


def test_predictions_go_64_at_a_time():
    prediction = {"label": "positive", "demonstrations": [], "prompt_tokens": 3}
    transport, seen = recording([(200, {"predictions": [prediction] * 64}, {}), (200, {"predictions": [prediction] * 6}, {})])
    predictions = client(transport).predict("films", [f"text {i}" for i in range(70)], k=4)
    assert len(predictions) == 70 and len(seen) == 2
    assert seen[1][2] == {"inputs": [{"text": f"text {i}"} for i in range(64, 70)], "k": 4}
