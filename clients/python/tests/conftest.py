"""Fixtures: the live server that ``scripts/python-tests.sh`` starts (its URL and admin
key in ``EXEMPLAR_URL`` and ``EXEMPLAR_API_KEY``), and the shared data sets."""

import json
import os
import uuid
from pathlib import Path

import pytest

import exemplar

REPO = Path(__file__).resolve().parents[3]
DATA = Path(os.environ.get("EXEMPLAR_DATA_DIR", REPO.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def server_url() -> str:
    url = os.environ.get("EXEMPLAR_URL")
    if not url:
        pytest.fail("EXEMPLAR_URL is not set: run scripts/python-tests.sh, which starts a server")
    return url


@pytest.fixture(scope="session")
def admin_key() -> str:
    return os.environ["EXEMPLAR_API_KEY"]


@pytest.fixture
def client(server_url: str, admin_key: str):
    with exemplar.Client(server_url, api_key=admin_key, poll_interval=0.2) as client:
        yield client


@pytest.fixture
def task_name() -> str:
    return f"py-{uuid.uuid4().hex[:8]}"


def read_jsonl(name: str, limit: int):
    with open(DATA / name, encoding="utf-8") as lines:
        return [json.loads(line) for _, line in zip(range(limit), lines)]
