"""The client: one method per thing a user does with Exemplar, over its HTTP API."""

from __future__ import annotations

import json
import math
import time
from typing import Any, Dict, Iterable, Iterator, List, Mapping, Optional, Sequence, Type, TypeVar, Union
from urllib.parse import quote

import httpx
from tqdm.auto import tqdm

from .errors import ExemplarError, JobFailedError, from_response
from .models import (
    Evaluation,
    EvaluationJob,
    Job,
    Key,
    Model,
    Prediction,
    Row,
    Selection,
    Task,
    Tuning,
    TuningJob,
)

#: The most rows one upload request carries (the server's cap).
MAX_BATCH_ROWS = 1000
#: The most inputs one predict request carries (the server's cap).
MAX_PREDICT_INPUTS = 64
#: Answers that mean the server stored nothing and asks to be retried later.
RETRIED_STATUSES = (429, 503)

#: A kind of background job.
J = TypeVar("J", bound=Job)

#: Rows as a user has them: dicts, strings (pool texts), or a pandas DataFrame.
Rows = Union[Iterable[Mapping[str, Any]], Iterable[str], Any]


def _records(rows: Rows, fields: Sequence[str]) -> Iterator[Dict[str, Any]]:
    """Each row as a dict of the API's ``fields``: a DataFrame's records, a mapping's
    keys, or a bare string as the text; missing values (None, NaN) are left out."""
    if hasattr(rows, "to_dict") and hasattr(rows, "columns"):
        rows = rows.to_dict("records")
    for row in rows:
        if isinstance(row, str):
            yield {"text": row}
            continue
        record = {}
        for name in fields:
            value = row.get(name)
            if value is None or (isinstance(value, float) and math.isnan(value)):
                continue
            # A DataFrame's ids and labels may be numbers; the API takes strings.
            record[name] = value if isinstance(value, str) else str(value)
        yield record


def _batches(records: Iterator[Dict[str, Any]], size: int) -> Iterator[List[Dict[str, Any]]]:
    batch: List[Dict[str, Any]] = []
    for record in records:
        batch.append(record)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def _inputs(texts: Union[str, Rows]) -> List[Dict[str, Any]]:
    if isinstance(texts, str):
        texts = [texts]
    return list(_records(texts, ("text", "text_pair")))


class Client:
    """A connection to one Exemplar server.

    ``Client("http://127.0.0.1:8080", api_key="exm_...")``. Uploads and predictions are
    cut into batches the server accepts; an answer of 429 or 503 (busy, loading, the
    database briefly away: nothing was stored) is retried after ``Retry-After`` with
    exponential back-off, up to ``retries`` times. Failures raise
    :class:`exemplar.ExemplarError` subclasses carrying the API's ``code``.
    """

    def __init__(
        self,
        url: str = "http://127.0.0.1:8080",
        api_key: Optional[str] = None,
        *,
        timeout: float = 300.0,
        retries: int = 5,
        backoff: float = 0.5,
        progress: bool = True,
        poll_interval: float = 1.0,
        transport: Optional[httpx.BaseTransport] = None,
    ) -> None:
        headers = {"authorization": f"Bearer {api_key}"} if api_key else {}
        self._http = httpx.Client(
            base_url=url.rstrip("/"), headers=headers, timeout=timeout, transport=transport
        )
        self.retries = retries
        self.backoff = backoff
        self.progress = progress
        self.poll_interval = poll_interval

    def close(self) -> None:
        """Closes the connection pool."""
        self._http.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # -- transport -------------------------------------------------------------

    def _send(self, method: str, path: str, body: Any = None, params: Any = None) -> httpx.Response:
        """Sends one request, retrying busy answers; returns a successful response."""
        for attempt in range(self.retries + 1):
            try:
                response = self._http.request(method, path, json=body, params=params)
            except httpx.ConnectError as error:
                # Nothing reached the server: safe to send again whatever the method.
                if attempt == self.retries:
                    raise ExemplarError(f"cannot reach {self._http.base_url}: {error}", code="connection_error") from error
                time.sleep(self.backoff * 2**attempt)
                continue
            if response.status_code in RETRIED_STATUSES and attempt < self.retries:
                time.sleep(self._retry_delay(response, attempt))
                continue
            if response.is_error:
                raise from_response(response.status_code, self._body(response))
            return response
        raise AssertionError("unreachable: the last attempt returns or raises")

    def _retry_delay(self, response: httpx.Response, attempt: int) -> float:
        delay = self.backoff * 2**attempt
        try:
            delay = max(delay, float(response.headers.get("retry-after", 0)))
        except ValueError:
            pass
        return min(delay, 30.0)

    @staticmethod
    def _body(response: httpx.Response) -> Any:
        try:
            return response.json()
        except ValueError:
            return response.text

    def _json(self, method: str, path: str, body: Any = None, params: Any = None) -> Any:
        response = self._send(method, path, body, params)
        return response.json() if response.content else None

    @staticmethod
    def _task(task: str) -> str:
        return f"/v1/tasks/{quote(task, safe='')}"

    # -- service ---------------------------------------------------------------

    def ready(self) -> bool:
        """Whether the server has loaded its models and can take work."""
        try:
            return self._http.get("/ready").status_code == 200
        except httpx.TransportError:
            return False

    def models(self) -> List[Model]:
        """The loaded LLMs; the first is the default."""
        return [Model.from_json(m) for m in self._json("GET", "/v1/models")["data"]]

    # -- tasks -----------------------------------------------------------------

    def create_task(
        self,
        name: str,
        labels: Sequence[str] = (),
        *,
        instruction: str = "",
        template: Optional[Mapping[str, str]] = None,
        separator: Optional[str] = None,
        defaults: Optional[Mapping[str, Any]] = None,
        model: Optional[str] = None,
    ) -> Task:
        """Creates (or replaces) a task. ``template`` has ``input`` (with ``{text}``) and
        ``output`` (ending with ``{label}``); without labels the task generates text."""
        spec: Dict[str, Any] = {
            "labels": list(labels),
            "instruction": instruction,
            "template": dict(template or {"input": "Input: {text}", "output": "Label: {label}"}),
        }
        for key, value in (("separator", separator), ("defaults", defaults), ("model", model)):
            if value is not None:
                spec[key] = dict(value) if isinstance(value, Mapping) else value
        return Task.from_json(self._json("PUT", self._task(name), spec))

    def task(self, name: str) -> Task:
        """One task with its counts."""
        return Task.from_json(self._json("GET", self._task(name)))

    def tasks(self) -> List[Task]:
        """Every task."""
        return [Task.from_json(t) for t in self._json("GET", "/v1/tasks")["tasks"]]

    def delete_task(self, name: str) -> None:
        """Deletes a task with its examples, pool and selections."""
        self._send("DELETE", self._task(name))

    # -- rows ------------------------------------------------------------------

    def _upload(self, path: str, key: str, records: Iterator[Dict[str, Any]], batch_size: int) -> List[str]:
        ids: List[str] = []
        for batch in _batches(records, min(batch_size, MAX_BATCH_ROWS)):
            ids.extend(self._json("POST", path, {key: batch})["ids"])
        return ids

    def add_examples(self, task: str, rows: Rows, *, batch_size: int = MAX_BATCH_ROWS) -> List[str]:
        """Adds annotated examples (``text``, ``label``, optional ``id`` and
        ``text_pair``) from dicts or a DataFrame, in batches; answers their ids."""
        records = _records(rows, ("id", "text", "text_pair", "label"))
        return self._upload(f"{self._task(task)}/examples", "examples", records, batch_size)

    def add_pool(self, task: str, rows: Rows, *, batch_size: int = MAX_BATCH_ROWS) -> List[str]:
        """Adds unlabelled texts (strings, dicts or a DataFrame) to the task's pool."""
        records = _records(rows, ("id", "text", "text_pair"))
        return self._upload(f"{self._task(task)}/pool", "items", records, batch_size)

    def _pages(self, path: str, key: str) -> Iterator[Row]:
        cursor: Optional[str] = None
        while True:
            params = {"limit": 1000, **({"cursor": cursor} if cursor else {})}
            page = self._json("GET", path, params=params)
            yield from (Row.from_json(r) for r in page[key])
            cursor = page.get("next_cursor")
            if not cursor:
                return

    def examples(self, task: str) -> Iterator[Row]:
        """Every annotated example, in insertion order."""
        return self._pages(f"{self._task(task)}/examples", "examples")

    def pool(self, task: str) -> Iterator[Row]:
        """Every pool item, in insertion order."""
        return self._pages(f"{self._task(task)}/pool", "items")

    def delete_example(self, task: str, id: str) -> None:
        """Deletes one annotated example."""
        self._send("DELETE", f"{self._task(task)}/examples/{quote(id, safe='')}")

    # -- predictions -----------------------------------------------------------

    def retrieve(self, task: str, text: str, **options: Any) -> List[Dict[str, Any]]:
        """The demonstrations a query would get (``k``, ``strategy``...), most similar first."""
        body = {"text": text, **options}
        return self._json("POST", f"{self._task(task)}/retrieve", body)["demonstrations"]

    def predict(self, task: str, texts: Union[str, Rows], **options: Any) -> List[Prediction]:
        """One prediction per text, in order; ``options`` are the API's (``k``,
        ``strategy``, ``calibration``...). Any number of texts, sent 64 at a time."""
        inputs = _inputs(texts)
        predictions: List[Prediction] = []
        for start in range(0, len(inputs), MAX_PREDICT_INPUTS):
            body = {"inputs": inputs[start : start + MAX_PREDICT_INPUTS], **options}
            answer = self._json("POST", f"{self._task(task)}/predict", body)
            predictions.extend(Prediction.from_json(p) for p in answer["predictions"])
        return predictions

    def predict_stream(self, task: str, texts: Union[str, Rows], **options: Any) -> Iterator[Prediction]:
        """Predictions as the server scores them (NDJSON), each with its input's
        ``index`` among all ``texts``."""
        inputs = _inputs(texts)
        for start in range(0, len(inputs), MAX_PREDICT_INPUTS):
            body = {"inputs": inputs[start : start + MAX_PREDICT_INPUTS], **options}
            with self._http.stream(
                "POST", f"{self._task(task)}/predict", json=body, headers={"accept": "application/x-ndjson"}
            ) as response:
                if response.is_error:
                    response.read()
                    raise from_response(response.status_code, self._body(response))
                for line in response.iter_lines():
                    if not line.strip():
                        continue
                    data = json.loads(line)
                    if "error" in data:
                        raise from_response(response.status_code, data)
                    prediction = Prediction.from_json(data)
                    if prediction.index is not None:
                        prediction.index += start
                    yield prediction

    def _wait(self, path: str, job: Dict[str, Any], what: str) -> Dict[str, Any]:
        """Polls a job until it ends, showing its progress; answers the ended job."""
        bar = None
        try:
            while job["state"] in ("running", "predicting"):
                progress = job.get("progress") or {}
                if self.progress and progress.get("of"):
                    if bar is None:
                        bar = tqdm(total=progress["of"], desc=what, unit="row")
                    bar.n = progress.get("done", 0)
                    bar.refresh()
                time.sleep(self.poll_interval)
                job = self._json("GET", path)
            if bar is not None:
                bar.n = (job.get("progress") or {}).get("done", bar.n)
                bar.refresh()
        finally:
            if bar is not None:
                bar.close()
        if job["state"] in ("failed", "cancelled"):
            reason = job.get("error") or job["state"]
            raise JobFailedError(f"{what} {job['id']} ended {job['state']}: {reason}", code=f"job_{job['state']}", body=job)
        return job

    def _job_outcome(self, kind: Type[J], jobs: str, job: Dict[str, Any], what: str, wait: bool) -> Any:
        """A started job as answered, or with ``wait`` its result once it has ended
        (``jobs`` is the path of the task's jobs of its kind)."""
        if not wait:
            return kind.from_json(job)
        ended = kind.from_json(self._wait(f"{jobs}/{job['id']}", job, what))
        assert ended.result is not None
        return ended.result

    def evaluate(
        self,
        task: str,
        examples: Optional[Rows] = None,
        *,
        leave_one_out: bool = False,
        wait: bool = True,
        **options: Any,
    ) -> Union[Evaluation, EvaluationJob]:
        """Evaluates the task on labelled ``examples`` (or leave-one-out on its own)
        as a background job; with ``wait`` (the default) polls it with a progress bar
        and answers the table, else answers the job."""
        body: Dict[str, Any] = {"leave_one_out": leave_one_out, "background": True, **options}
        if examples is not None:
            body["examples"] = list(_records(examples, ("text", "text_pair", "label")))
        job = self._json("POST", f"{self._task(task)}/evaluate", body)
        return self._job_outcome(EvaluationJob, f"{self._task(task)}/evaluations", job, "evaluation", wait)

    def evaluation(self, task: str, id: str) -> EvaluationJob:
        """An evaluation job as it stands."""
        return EvaluationJob.from_json(self._json("GET", f"{self._task(task)}/evaluations/{id}"))

    def cancel_evaluation(self, task: str, id: str) -> EvaluationJob:
        """Cancels a running evaluation job."""
        return EvaluationJob.from_json(self._json("DELETE", f"{self._task(task)}/evaluations/{id}"))

    def tune(self, task: str, *, wait: bool = True, **grid: Any) -> Union[Tuning, TuningJob]:
        """Measures a grid of prediction options (``k=[4, 8]``, ``calibration=[...]``...)
        by leave-one-out and stores the best as the task's defaults; with ``wait``
        answers the table."""
        job = self._json("POST", f"{self._task(task)}/tune", grid)
        return self._job_outcome(TuningJob, f"{self._task(task)}/tunings", job, "tuning", wait)

    # -- selective annotation --------------------------------------------------

    def select(
        self,
        task: str,
        method: str,
        budget: int,
        *,
        seed: int = 0,
        params: Optional[Mapping[str, Any]] = None,
        wait: bool = True,
    ) -> Selection:
        """Chooses ``budget`` pool items to annotate (``random``, ``fast-vote-k``,
        ``vote-k``, ``ideal``). Vote-k first answers its stage-1 items
        (``awaiting_annotation``): annotate them, then :meth:`continue_selection`."""
        body: Dict[str, Any] = {"method": method, "budget": budget, "seed": seed}
        if params:
            body["params"] = dict(params)
        selection = self._json("POST", f"{self._task(task)}/selections", body)
        return self._settle(task, selection, wait)

    def continue_selection(self, task: str, id: str, *, wait: bool = True) -> Selection:
        """Runs vote-k's stage 2 once its stage-1 items are annotated; with ``wait``
        polls it with a progress bar until it is complete."""
        path = f"{self._task(task)}/selections/{quote(id, safe='')}/continue"
        return self._settle(task, self._json("POST", path), wait)

    def selection(self, task: str, id: str) -> Selection:
        """A selection as it stands."""
        return Selection.from_json(self._json("GET", f"{self._task(task)}/selections/{quote(id, safe='')}"))

    def _settle(self, task: str, selection: Dict[str, Any], wait: bool) -> Selection:
        if wait and selection["state"] == "predicting":
            path = f"{self._task(task)}/selections/{quote(selection['id'], safe='')}"
            selection = self._wait(path, selection, "vote-k stage 2")
        return Selection.from_json(selection)

    # -- keys ------------------------------------------------------------------

    def create_key(self, scope: str, *, name: Optional[str] = None, tasks: Optional[Sequence[str]] = None) -> Key:
        """Makes an API key (``read``, ``write`` or ``admin``); its ``key`` is shown only here."""
        body: Dict[str, Any] = {"scope": scope}
        if name is not None:
            body["name"] = name
        if tasks is not None:
            body["tasks"] = list(tasks)
        return Key.from_json(self._json("POST", "/v1/keys", body))

    def keys(self) -> List[Key]:
        """Every key, revoked ones included (never the secrets)."""
        return [Key.from_json(k) for k in self._json("GET", "/v1/keys")["keys"]]

    def revoke_key(self, id: str) -> None:
        """Revokes a key."""
        self._send("DELETE", f"/v1/keys/{quote(id, safe='')}")
