#!/usr/bin/env python3
"""A replica's memory against the tasks it holds: 30 tasks of 5000 SST-2 examples on one database,
and a replica that is asked for every task (every replica, before tasks were loaded on first
use), for a third of them (its share of 3 replicas behind nginx's task affinity), and for every
task under a budget (--resident-examples); with the first-request latency of a cold task.

    scripts/residency-bench.py [--tasks 30] [--examples 5000] [--replicas 3]

The examples are embedded once, for one task, and copied to the others in the database (the
embedder's time is not what is measured). Uses target/release/exemplar, the models under
models/ and ../shared/data. Standard library only; prints a Markdown table.
"""

import argparse
import os
import sqlite3
import statistics
import sys
import tempfile
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from faults import TASK, Server, call, rows  # noqa: E402


def copy_task(database, source, names):
    """Copies `source`'s row and examples to each of `names`, as if written there."""
    db = sqlite3.connect(database)
    for table in ("tasks", "examples"):
        columns = [c[1] for c in db.execute(f"PRAGMA table_info({table})") if c[1] != "seq"]
        key = "name" if table == "tasks" else "task"
        chosen = ", ".join("?" if c == key else c for c in columns)
        for name in names:
            db.execute(f"INSERT INTO {table} ({', '.join(columns)}) "
                       f"SELECT {chosen} FROM {table} WHERE {key} = ?", (name, source))
    db.commit()
    db.close()


def resident_examples(server):
    """The examples the server holds in memory, from its /metrics."""
    with urllib.request.urlopen(server.base + "/metrics", timeout=30) as response:
        for line in response.read().decode().splitlines():
            if line.startswith("exemplar_resident_examples "):
                return float(line.split()[1])
    return 0.0


def ask_each(server, tasks, query):
    """Retrieves once from each task; answers the seconds each took."""
    seconds = []
    for task in tasks:
        started = time.perf_counter()
        status, body = call(server, "POST", f"/v1/tasks/{task}/retrieve", {"text": query, "k": 4})
        seconds.append(time.perf_counter() - started)
        assert status == 200, body
    return seconds


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=30)
    parser.add_argument("--examples", type=int, default=5000)
    parser.add_argument("--replicas", type=int, default=3)
    args = parser.parse_args()
    directory = tempfile.mkdtemp(prefix="exemplar-residency-")
    database = os.path.join(directory, "exemplar.db")
    url = f"sqlite://{database}"

    server = Server(url)
    assert call(server, "PUT", "/v1/tasks/seed", TASK)[0] == 201
    examples = rows(args.examples)
    for start in range(0, len(examples), 100):
        batch = [{"id": f"e{start + i}", **row} for i, row in enumerate(examples[start:start + 100])]
        status, body = call(server, "POST", "/v1/tasks/seed/examples", {"examples": batch})
        assert status == 201, body
    server.kill()
    tasks = [f"t{i:02}" for i in range(args.tasks)]
    copy_task(database, "seed", tasks)
    query = examples[0]["text"]
    share = tasks[: len(tasks) // args.replicas]
    everything = args.tasks * args.examples
    budget = everything // args.replicas

    print("| replica asked for | examples held | RSS MB | above rest MB |")
    print("|---|---|---|---|")
    cases = [
        ("nothing (at rest)", [], everything),
        (f"every task ({args.tasks}: every replica before, or round-robin)", tasks, everything),
        (f"its share ({len(share)} tasks of {args.replicas} replicas, task affinity)", share, everything),
        (f"every task, --resident-examples {budget}", tasks, budget),
    ]
    rest = None
    cold = warm = None
    for what, asked, resident in cases:
        server = Server(url, "--resident-examples", str(resident))
        first = ask_each(server, asked, query)
        again = ask_each(server, asked, query)
        if asked is share:
            cold, warm = statistics.median(first), statistics.median(again)
        held = resident_examples(server)
        rss = server.rss_mb()
        rest = rss if rest is None else rest
        print(f"| {what} | {held:.0f} | {rss:.0f} | {rss - rest:.0f} |", flush=True)
        server.kill()
    print()
    print(f"first request of a cold task of {args.examples} examples: median {cold * 1000:.0f} ms "
          f"(rows read, index built); warm: {warm * 1000:.1f} ms")


if __name__ == "__main__":
    main()
