"""The client against a live server with the real models: the whole loop a user runs
from a notebook (task, pool, selection, labels, evaluation, tuning, predictions), and
keys, on SST-2 rows."""

import pandas as pd
import pytest

import exemplar

from conftest import read_jsonl

SENTIMENT = {"input": "Review: {text}", "output": "Sentiment: {label}"}


def test_the_whole_loop(client, task_name):
    train = pd.DataFrame(read_jsonl("sst2/train.jsonl", 40))
    train["id"] = [f"t{i}" for i in range(len(train))]
    gold = dict(zip(train["id"], train["label"]))
    test = read_jsonl("sst2/test.jsonl", 12)

    task = client.create_task(
        task_name, ["negative", "positive"], instruction="Classify the sentiment of each movie review.", template=SENTIMENT
    )
    assert task.name == task_name and task.labels == ["negative", "positive"]
    assert client.add_pool(task_name, train[["id", "text"]]) == list(train["id"])

    selection = client.select(task_name, "fast-vote-k", 8, params={"k": 5})
    assert selection.complete and len(selection.items) == 8
    client.add_examples(task_name, [{"id": i.id, "text": i.text, "label": gold[i.id]} for i in selection.items])
    assert client.task(task_name).counts["examples"] == 8
    assert sorted(row.id for row in client.examples(task_name)) == sorted(i.id for i in selection.items)

    evaluation = client.evaluate(task_name, test, k=4)
    assert isinstance(evaluation, exemplar.Evaluation)
    assert evaluation.n == 12
    assert sum(map(sum, evaluation.confusion)) == 12
    assert evaluation.labels == ["negative", "positive"]
    assert set(evaluation.to_pandas().index) == {"negative", "positive"}

    texts = ["a warm, funny and moving film", "a dull, lifeless mess"]
    predictions = client.predict(task_name, texts, k=4)
    assert [p.label for p in predictions] == ["positive", "negative"]
    assert all(abs(sum(p.probabilities.values()) - 1) < 1e-3 for p in predictions)
    assert all(len(p.demonstrations) == 4 for p in predictions)
    streamed = sorted(client.predict_stream(task_name, texts, k=4), key=lambda p: p.index)
    assert [p.label for p in streamed] == ["positive", "negative"]

    tuning = client.tune(
        task_name, max_examples=8, k=[2, 4], strategy=["knn"], order=["nearest_last"], calibration=["none"], vote_weight=[0.0]
    )
    assert isinstance(tuning, exemplar.Tuning)
    assert len(tuning.table) == 2 and tuning.best == tuning.table[0]
    assert client.task(task_name).defaults["k"] == tuning.best.k

    client.delete_task(task_name)
    with pytest.raises(exemplar.NotFoundError) as missing:
        client.task(task_name)
    assert missing.value.code == "task_not_found"


def test_vote_k_waits_for_its_second_stage(client, task_name):
    train = read_jsonl("sst2/train.jsonl", 30)
    gold = {f"v{i}": row["label"] for i, row in enumerate(train)}
    client.create_task(task_name, ["negative", "positive"], template=SENTIMENT)
    client.add_pool(task_name, [{"id": f"v{i}", "text": row["text"]} for i, row in enumerate(train)])

    stage_one = client.select(task_name, "vote-k", 6, params={"k": 5, "stage_one": 3})
    assert stage_one.state == "awaiting_annotation" and len(stage_one.items) == 3
    client.add_examples(task_name, [{"id": i.id, "text": i.text, "label": gold[i.id]} for i in stage_one.items])
    done = client.continue_selection(task_name, stage_one.id)
    assert done.complete and len(done.items) == 6
    client.delete_task(task_name)


def test_errors_carry_the_apis_code(client, task_name):
    client.create_task(task_name, ["a", "b"], template={"input": "{text}", "output": "{label}"})
    with pytest.raises(exemplar.InvalidRequestError) as refused:
        client.select(task_name, "vote-k", 0)
    assert refused.value.code == "invalid_value" and refused.value.status == 422
    with pytest.raises(exemplar.InvalidRequestError) as no_examples:
        client.predict(task_name, "anything")
    assert no_examples.value.code == "no_examples"
    client.delete_task(task_name)


def test_keys_limit_what_a_client_may_do(client, server_url, task_name):
    client.create_task(task_name, ["negative", "positive"], template=SENTIMENT)
    client.add_examples(task_name, [{"text": "a fine film", "label": "positive"}, {"text": "awful", "label": "negative"}])
    key = client.create_key("read", name="notebook", tasks=[task_name])
    assert key.key and key.key.startswith("exm_")
    with exemplar.Client(server_url, api_key=key.key) as reader:
        assert reader.predict(task_name, "a fine, fine film", k=2)[0].label in {"negative", "positive"}
        with pytest.raises(exemplar.PermissionDeniedError) as denied:
            reader.create_task(task_name + "-2", ["x"])
        assert denied.value.code == "forbidden"
    client.revoke_key(key.id)
    with exemplar.Client(server_url, api_key=key.key, retries=0) as revoked:
        with pytest.raises(exemplar.AuthenticationError):
            revoked.task(task_name)
    client.delete_task(task_name)
