#!/usr/bin/env python3
"""Faults survived, with figures: kills a server mid-write, mid-stage-2 and mid-evaluation, stops
PostgreSQL under load, and soaks a server with mixed traffic.

    scripts/faults.py import     [--trials 20]   SIGKILL during imports: batches whole or absent
    scripts/faults.py stage-two  [--trials 20]   SIGKILL during vote-k's stage 2: resumed, same items
    scripts/faults.py evaluation [--trials 20]   SIGKILL during an evaluation job: resumed by the
                                                 restarted replica, same table, rows redone
    scripts/faults.py postgres   [--seconds 20]  PostgreSQL stopped under load (root, needs
                                                 EXEMPLAR_TEST_POSTGRES_URL): 503 while down,
                                                 recovery by itself, no partial batch
    scripts/faults.py soak       [--minutes 10]  8 clients mixing writes (deleted again),
                                                 retrievals and predictions: only 2xx/429,
                                                 peak RSS per quarter of the run
    scripts/faults.py kv-memory  [--trials 8]    that many completions at once of a 2700-token
                  [--prompt-tokens 2700]         prompt and 512 new tokens, --kv-cache-mb 256:
                  [--new-tokens 512]             peak RSS against RSS at rest plus the budget

Uses target/release/exemplar (build it first), the models under models/ and the SST-2
rows of ../shared/data. Standard library only. Prints one summary line per scenario.
"""

import argparse
import json
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BINARY = os.path.join(ROOT, "target/release/exemplar")
SST2 = os.path.join(ROOT, "../shared/data/sst2/train.jsonl")
TASK = {
    "labels": ["negative", "positive"],
    "template": {"input": "Review: {text}", "output": "Sentiment: {label}"},
}


def rows(n):
    with open(SST2) as f:
        return [json.loads(line) for line in f if line.strip()][:n]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """An `exemplar serve` process on a database URL."""

    def __init__(self, database_url, *args):
        self.database_url = database_url
        self.args = list(args)
        self.start()

    def start(self):
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.log = tempfile.NamedTemporaryFile(prefix="exemplar-fault-", suffix=".log", delete=False)
        env = dict(os.environ, EXEMPLAR_MODELS_DIR=os.path.join(ROOT, "models"))
        self.process = subprocess.Popen(
            [BINARY, "serve", "--addr", f"127.0.0.1:{self.port}", "--database-url", self.database_url,
             "--client-rate", "0", "--client-max-in-flight", "0", *self.args],
            stdout=subprocess.DEVNULL, stderr=self.log, env=env)
        deadline = time.time() + 180
        while time.time() < deadline:
            if self.process.poll() is not None:
                sys.exit(f"server exited: see {self.log.name}")
            try:
                if call(self, "GET", "/ready")[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(0.2)
        sys.exit("server not ready after 180 s")

    def kill(self):
        self.process.send_signal(signal.SIGKILL)
        self.process.wait()

    def restart(self):
        self.kill()
        self.start()

    def rss_mb(self, field="VmRSS"):
        with open(f"/proc/{self.process.pid}/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024
        return 0.0


def call(server, method, path, body=None, timeout=300):
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(server.base + path, data=data, method=method)
    if data is not None:
        request.add_header("content-type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            text = response.read()
            return response.status, json.loads(text) if text else None
    except urllib.error.HTTPError as e:
        text = e.read()
        try:
            return e.code, json.loads(text)
        except ValueError:
            return e.code, None


def stored_ids(server, task):
    ids, cursor = set(), None
    while True:
        path = f"/v1/tasks/{task}/examples?limit=1000" + (f"&cursor={cursor}" if cursor else "")
        status, page = call(server, "GET", path)
        assert status == 200, page
        ids.update(item["id"] for item in page["examples"])
        cursor = page.get("next_cursor")
        if not cursor:
            return ids


def scenario_import(trials):
    data = rows(1000)
    torn = 0
    killed_batches = []
    for trial in range(trials):
        work = tempfile.mkdtemp()
        server = Server(f"sqlite://{work}/exemplar.db")
        call(server, "PUT", "/v1/tasks/sst2", TASK)
        batches = [[{"id": f"t{trial}b{b}r{r}", "text": row["text"], "label": row["label"]}
                    for r, row in enumerate(data[b * 100:(b + 1) * 100])] for b in range(10)]

        def send():
            for batch in batches:
                try:
                    call(server, "POST", "/v1/tasks/sst2/examples", {"examples": batch})
                except OSError:
                    return
        sender = threading.Thread(target=send)
        sender.start()
        time.sleep(random.uniform(0.5, 6.0))
        server.kill()
        sender.join()
        server.start()
        ids = stored_ids(server, "sst2")
        whole = 0
        for batch in batches:
            present = sum(1 for row in batch if row["id"] in ids)
            if present not in (0, len(batch)):
                torn += 1
            whole += present == len(batch)
        killed_batches.append(whole)
        server.kill()
    print(f"import: {trials} kills during 10-batch imports; batches stored before the kill "
          f"{min(killed_batches)}..{max(killed_batches)}; torn batches {torn}")
    return torn == 0


def wait_selection(server, path, predicate, seconds=600):
    deadline = time.time() + seconds
    while time.time() < deadline:
        status, selection = call(server, "GET", path)
        if status == 200 and predicate(selection):
            return selection
        time.sleep(0.2)
    raise SystemExit(f"timed out on {path}: {selection}")


def start_stage_two(server, pool, request):
    call(server, "PUT", "/v1/tasks/sst2", TASK)
    items = [{"id": f"p{i}", "text": row["text"]} for i, row in enumerate(pool)]
    call(server, "POST", "/v1/tasks/sst2/pool", {"items": items})
    _, stage_one = call(server, "POST", "/v1/tasks/sst2/selections", request)
    chosen = {item["id"] for item in stage_one["items"]}
    examples = [{"id": f"p{i}", "text": row["text"], "label": row["label"]}
                for i, row in enumerate(pool) if f"p{i}" in chosen]
    call(server, "POST", "/v1/tasks/sst2/examples", {"examples": examples})
    status, started = call(server, "POST", "/v1/tasks/sst2/selections", request)
    assert status == 202, started
    return f"/v1/tasks/sst2/selections/{started['id']}"


def scenario_stage_two(trials):
    pool = rows(64)
    request = {"method": "vote-k", "budget": 8, "seed": 0, "params": {"k": 10, "stage_one": 2}}
    work = tempfile.mkdtemp()
    server = Server(f"sqlite://{work}/reference.db", "--job-lease-seconds", "2")
    path = start_stage_two(server, pool, request)
    reference = [i["id"] for i in wait_selection(server, path, lambda s: s["complete"])["items"]]
    server.kill()
    same, resume_seconds = 0, []
    for trial in range(trials):
        server = Server(f"sqlite://{work}/trial{trial}.db", "--job-lease-seconds", "2")
        path = start_stage_two(server, pool, request)
        target = random.randint(16, 48)
        at_kill = wait_selection(server, path,
                                 lambda s: (s.get("progress") or {}).get("done", 0) >= target
                                 or s["complete"])
        done_at_kill = (at_kill.get("progress") or {}).get("done", 0)
        killed = time.time()
        server.restart()
        # Resumed: a batch saved past what was saved before the kill.
        wait_selection(server, path, lambda s: s["complete"]
                       or (s.get("progress") or {}).get("done", 0) > done_at_kill)
        resume_seconds.append(time.time() - killed)
        done = wait_selection(server, path, lambda s: s["complete"])
        same += [i["id"] for i in done["items"]] == reference
        server.kill()
    print(f"stage-two: {trials} kills at 16..48 of 62 predictions; resumed by the restarted "
          f"replica in {min(resume_seconds):.1f}..{max(resume_seconds):.1f} s (restart included); "
          f"same items as the uninterrupted run {same}/{trials}")
    return same == trials


def scenario_evaluation(trials):
    examples = [{"id": f"e{i}", "text": row["text"], "label": row["label"]} for i, row in enumerate(rows(124))]
    test = [{"text": row["text"], "label": row["label"]} for row in rows(220)[124:]]
    request = {"examples": test, "k": 4, "background": True}

    def start(server):
        call(server, "PUT", "/v1/tasks/sst2", TASK)
        call(server, "POST", "/v1/tasks/sst2/examples", {"examples": examples})
        status, job = call(server, "POST", "/v1/tasks/sst2/evaluate", request)
        assert status == 202, job
        return f"/v1/tasks/sst2/evaluations/{job['id']}"

    def predictions(server):
        request = urllib.request.Request(server.base + "/metrics")
        with urllib.request.urlopen(request, timeout=60) as response:
            for line in response.read().decode().splitlines():
                if line.startswith("exemplar_predictions_total "):
                    return float(line.split()[1])
        return 0.0

    work = tempfile.mkdtemp()
    server = Server(f"sqlite://{work}/reference.db", "--job-lease-seconds", "2")
    path = start(server)
    reference = wait_selection(server, path, lambda j: j["state"] != "running")
    assert reference["state"] == "complete", reference
    server.kill()
    same, resume_seconds, redone = 0, [], []
    for trial in range(trials):
        server = Server(f"sqlite://{work}/trial{trial}.db", "--job-lease-seconds", "2")
        path = start(server)
        target = random.randint(16, 80)
        saved = wait_selection(server, path, lambda j: j["progress"]["done"] >= target or j["state"] != "running")
        killed = time.time()
        server.restart()
        wait_selection(server, path, lambda j: predictions(server) > 0 or j["state"] != "running")
        resume_seconds.append(time.time() - killed)
        done = wait_selection(server, path, lambda j: j["state"] != "running")
        same += done["state"] == "complete" and done["result"] == reference["result"]
        redone.append(predictions(server) - (len(test) - saved["progress"]["done"]))
        server.kill()
    print(f"evaluation: {trials} kills at 16..80 of {len(test)} rows; resumed by the restarted "
          f"replica in {min(resume_seconds):.1f}..{max(resume_seconds):.1f} s (restart included); "
          f"rows predicted again after a kill {min(redone):.0f}..{max(redone):.0f} (at most one "
          f"batch of 16 unsaved); same table as the uninterrupted run {same}/{trials}")
    return same == trials


def scenario_postgres(seconds):
    admin = os.environ.get("EXEMPLAR_TEST_POSTGRES_URL")
    if not admin:
        sys.exit("postgres: set EXEMPLAR_TEST_POSTGRES_URL (scripts/start-postgres.sh)")
    version = sorted(os.listdir("/etc/postgresql"), key=float)[-1]
    name = f"exemplar_fault_{random.getrandbits(32):08x}"
    subprocess.run(["su", "postgres", "-c", f"psql -qc 'CREATE DATABASE {name} OWNER exemplar'"],
                   check=True, stdout=subprocess.DEVNULL)
    server = Server(admin.rsplit("/", 1)[0] + "/" + name)
    call(server, "PUT", "/v1/tasks/sst2", TASK)
    data = rows(2000)
    call(server, "POST", "/v1/tasks/sst2/examples",
         {"examples": [{"id": f"seed{i}", "text": r["text"], "label": r["label"]}
                       for i, r in enumerate(data[:50])]})
    statuses, answered, lock, stop = {}, {}, threading.Lock(), threading.Event()

    def writer(w):
        b = 0
        while not stop.is_set():
            batch = [{"id": f"w{w}b{b}r{r}", "text": row["text"], "label": row["label"]}
                     for r, row in enumerate(data[50 + (b * 10) % 1900:][:10])]
            try:
                status, _ = call(server, "POST", "/v1/tasks/sst2/examples", {"examples": batch}, 60)
            except OSError:
                status = 0
            with lock:
                statuses[status] = statuses.get(status, 0) + 1
                answered[(w, b)] = status
            b += 1

    def reader():
        while not stop.is_set():
            try:
                status, _ = call(server, "POST", "/v1/tasks/sst2/retrieve", {"text": "a fine film", "k": 4}, 60)
            except OSError:
                status = 0
            with lock:
                statuses[status] = statuses.get(status, 0) + 1

    threads = [threading.Thread(target=writer, args=(w,)) for w in range(2)]
    threads += [threading.Thread(target=reader) for _ in range(2)]
    for t in threads:
        t.start()
    time.sleep(5)
    subprocess.run(["pg_ctlcluster", version, "main", "stop", "-m", "fast"], check=True)
    down = time.time()
    time.sleep(seconds)
    subprocess.run(["pg_ctlcluster", version, "main", "start"], check=True)
    up = time.time()
    recovered = None
    while recovered is None and time.time() < up + 120:
        if call(server, "GET", "/v1/tasks/sst2")[0] == 200:
            recovered = time.time() - up
        time.sleep(0.2)
    time.sleep(5)
    stop.set()
    for t in threads:
        t.join()
    ids = stored_ids(server, "sst2")
    torn = lost = 0
    for (w, b), status in answered.items():
        present = sum(1 for r in range(10) if f"w{w}b{b}r{r}" in ids)
        torn += present not in (0, 10)
        lost += status == 201 and present != 10
    server.kill()
    unexpected = {s: n for s, n in statuses.items() if s not in (200, 201, 503)}
    print(f"postgres: stopped {seconds} s under 2 writers and 2 readers; answers {dict(sorted(statuses.items()))}; "
          f"recovered {recovered:.1f} s after the restart; torn batches {torn}; answered-201 batches missing {lost}")
    return not unexpected and torn == 0 and lost == 0 and recovered is not None


def scenario_soak(minutes):
    work = tempfile.mkdtemp()
    server = Server(f"sqlite://{work}/exemplar.db")
    call(server, "PUT", "/v1/tasks/sst2", TASK)
    data = rows(3000)
    call(server, "POST", "/v1/tasks/sst2/examples",
         {"examples": [{"id": f"seed{i}", "text": r["text"], "label": r["label"]}
                       for i, r in enumerate(data[:200])]})
    statuses, lock, stop = {}, threading.Lock(), threading.Event()

    def client(c):
        n = 0
        written = []
        while not stop.is_set():
            kind = n % 4
            try:
                if kind == 0 and written:
                    # Delete what the last write added: the data stays the same size,
                    # so memory that grows is a leak, not more examples.
                    for id in written:
                        status, _ = call(server, "DELETE", f"/v1/tasks/sst2/examples/{id}")
                    written = []
                elif kind == 0:
                    batch = [{"id": f"c{c}n{n}r{r}", "text": row["text"], "label": row["label"]}
                             for r, row in enumerate(data[200 + (n * 5) % 2700:][:5])]
                    status, _ = call(server, "POST", "/v1/tasks/sst2/examples", {"examples": batch})
                    written = [row["id"] for row in batch]
                elif kind == 3:
                    status, _ = call(server, "POST", "/v1/tasks/sst2/predict",
                                     {"inputs": [{"text": data[n % 3000]["text"]}], "k": 4})
                else:
                    status, _ = call(server, "POST", "/v1/tasks/sst2/retrieve",
                                     {"text": data[(n * 7) % 3000]["text"], "k": 8})
            except OSError:
                status = 0
            with lock:
                statuses[status] = statuses.get(status, 0) + 1
            n += 1

    threads = [threading.Thread(target=client, args=(c,)) for c in range(8)]
    for t in threads:
        t.start()
    rss = []
    end = time.time() + minutes * 60
    while time.time() < end:
        time.sleep(10)
        rss.append(server.rss_mb())
    stop.set()
    for t in threads:
        t.join()
    server.kill()
    bad = {s: n for s, n in statuses.items() if not (200 <= s < 300 or s == 429)}
    quarters = [max(rss[i * len(rss) // 4:(i + 1) * len(rss) // 4] or [0]) for i in range(4)]
    print(f"soak: {minutes} min, 8 clients (writes deleted again, so the data stays the same size); "
          f"answers {dict(sorted(statuses.items()))}; peak RSS MB per quarter "
          f"{', '.join(f'{q:.0f}' for q in quarters)}")
    return not bad


def scenario_kv_memory(clients, prompt_tokens, new_tokens):
    budget_mb = 256
    work = tempfile.mkdtemp()
    server = Server(f"sqlite://{work}/exemplar.db", "--kv-cache-mb", str(budget_mb))
    # One small call first, so that the resting RSS includes what any first request maps.
    call(server, "POST", "/v1/completions", {"prompt": "Hello", "max_tokens": 2})
    rest = server.rss_mb()
    words = " ".join(r["text"] for r in rows(400)).split()
    count = prompt_tokens * 3 // 4
    while True:
        # Words until the prompt is as long as asked, give or take the last word.
        prompt = " ".join(words[:count])
        status, tokens = call(server, "POST", "/v1/tokenize", {"text": prompt})
        assert status == 200, tokens
        if len(tokens["ids"]) >= prompt_tokens - 10:
            break
        count += max(1, (prompt_tokens - len(tokens["ids"])) * count // len(tokens["ids"]) // 2)
    answers, lock = [], threading.Lock()

    def client(c):
        # A different first word each, so that no two share a cached prefix.
        status, body = call(server, "POST", "/v1/completions",
                            {"prompt": f"Client {c}. {prompt}", "max_tokens": new_tokens,
                             "temperature": 0.0}, timeout=3600)
        with lock:
            answers.append((status, (body or {}).get("usage", {})))

    threads = [threading.Thread(target=client, args=(c,)) for c in range(clients)]
    started = time.time()
    for t in threads:
        t.start()
    peak = 0.0
    while any(t.is_alive() for t in threads):
        peak = max(peak, server.rss_mb())
        time.sleep(0.2)
    peak = max(peak, server.rss_mb("VmHWM"))
    server.kill()
    statuses = sorted(status for status, _ in answers)
    prompt_tokens = max((u.get("prompt_tokens", 0) for _, u in answers), default=0)
    generated = sum(u.get("completion_tokens", 0) for _, u in answers)
    print(f"kv-memory: {clients} completions at once of {prompt_tokens} prompt tokens and up to "
          f"{new_tokens} new ({generated} generated in all) with --kv-cache-mb {budget_mb}, in "
          f"{time.time() - started:.0f} s; answers {statuses}; RSS at rest {rest:.0f} MB, peak "
          f"{peak:.0f} MB: {peak - rest:.0f} MB above rest against a budget of {budget_mb} MB")
    return all(status == 200 for status in statuses)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("scenario",
                        choices=["import", "stage-two", "evaluation", "postgres", "soak", "kv-memory"])
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--seconds", type=int, default=20)
    parser.add_argument("--minutes", type=float, default=10)
    parser.add_argument("--prompt-tokens", type=int, default=2700)
    parser.add_argument("--new-tokens", type=int, default=512)
    args = parser.parse_args()
    if not os.access(BINARY, os.X_OK):
        sys.exit(f"no binary at {BINARY}: cargo build --release first")
    ok = {
        "import": lambda: scenario_import(args.trials),
        "stage-two": lambda: scenario_stage_two(args.trials),
        "evaluation": lambda: scenario_evaluation(args.trials),
        "postgres": lambda: scenario_postgres(args.seconds),
        "soak": lambda: scenario_soak(args.minutes),
        "kv-memory": lambda: scenario_kv_memory(args.trials if args.trials != 20 else 8,
                                                args.prompt_tokens, args.new_tokens),
    }[args.scenario]()
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
