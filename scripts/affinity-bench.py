#!/usr/bin/env python3
"""Task affinity at the balancer, measured: the compose stack (3 replicas, nginx) with nginx's
consistent hash of the task (docker/nginx.conf as shipped) and with plain round-robin (the same
file without its `hash` line), under the same mixed load: 6 tasks (two each of SST-2, TREC and
SUBJ, 200 annotated examples apiece), predictions with cached demonstrations from several
clients, each request a random task and one of that task's test texts (seeded: both runs send
the same requests in the same order per client).

    scripts/affinity-bench.py [--requests 600] [--clients 6] [--image exemplar:cpu]

Needs the image (docker build -f docker/Dockerfile --target prebuilt -t exemplar:cpu .) and the
base images (docker/base-images.sh). Prints, per balancing: demonstration-cache hit rate over
the three replicas, predictions/s, p50 and p99 latency. Standard library only.
"""

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA = os.path.join(ROOT, "../shared/data")
KEY = "affinity-bench-admin-key-0123456789abcdef"
REPLICAS = ["exemplar-1", "exemplar-2", "exemplar-3"]
EXAMPLES = 200
QUERIES = 40
DATASETS = {
    "sst2": (["negative", "positive"], "Review: {text}", "Sentiment: {label}"),
    "trec": (["abbreviation", "description", "entity", "human", "location", "number"],
             "Question: {text}", "Answer type: {label}"),
    "subj": (["objective", "subjective"], "Sentence: {text}", "Type: {label}"),
}


def read(dataset, split):
    with open(os.path.join(DATA, dataset, f"{split}.jsonl")) as f:
        return [json.loads(line) for line in f if line.strip()]


class Stack:
    """The compose project, with nginx's configuration replaced by `nginx_conf`."""

    def __init__(self, image, nginx_conf, port):
        self.port = port
        self.dir = tempfile.mkdtemp(prefix="exemplar-affinity-")
        override = os.path.join(self.dir, "override.yaml")
        with open(override, "w") as f:
            f.write("services:\n  nginx:\n    volumes:\n"
                    f"      - {nginx_conf}:/etc/nginx/conf.d/default.conf:ro\n")
        self.compose = ["docker-compose", "-f", os.path.join(ROOT, "docker/compose.yaml"),
                        "-f", override, "-p", "exemplar-affinity"]
        self.env = dict(os.environ, EXEMPLAR_IMAGE=image, EXEMPLAR_PORT=str(port),
                        EXEMPLAR_BOOTSTRAP_KEY=KEY)

    def run(self, *args, check=True):
        return subprocess.run(self.compose + list(args), env=self.env, capture_output=True,
                              text=True, check=check)

    def up(self):
        self.run("up", "-d", "--no-build")
        deadline = time.time() + 300
        for replica in REPLICAS:
            while self.run("exec", "-T", replica, "curl", "-fsS", "http://127.0.0.1:8080/ready",
                           check=False).returncode != 0:
                if time.time() > deadline:
                    sys.exit(f"{replica} not ready:\n" + self.run("logs", "--tail", "30").stdout)
                time.sleep(1)

    def down(self):
        self.run("down", "-v", "-t", "10", check=False)

    def cache_lookups(self):
        """Demonstration-cache hits and misses summed over the replicas."""
        hits = misses = 0
        for replica in REPLICAS:
            text = self.run("exec", "-T", replica, "curl", "-fsS",
                            "http://127.0.0.1:8080/metrics").stdout
            for line in text.splitlines():
                if line.startswith("exemplar_demonstration_cache_lookups_total{"):
                    value = float(line.rsplit(" ", 1)[1])
                    if 'outcome="hit"' in line:
                        hits += value
                    elif 'outcome="miss"' in line:
                        misses += value
        return hits, misses

    def call(self, method, path, body=None):
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.port}{path}", method=method,
            data=None if body is None else json.dumps(body).encode(),
            headers={"content-type": "application/json", "authorization": f"Bearer {KEY}"})
        try:
            with urllib.request.urlopen(request, timeout=300) as response:
                return response.status, json.loads(response.read() or b"null")
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read() or b"null")


def tasks():
    """Six tasks: the name, its data set, its examples and its queries."""
    made = []
    for dataset in DATASETS:
        train, test = read(dataset, "train"), read(dataset, "test")
        for half in range(2):
            examples = train[half * EXAMPLES:(half + 1) * EXAMPLES]
            queries = [row["text"] for row in test[half * QUERIES:(half + 1) * QUERIES]]
            made.append((f"{dataset}-{half}", dataset, examples, queries))
    return made


def measure(stack, requests, clients):
    for name, dataset, examples, _ in TASKS:
        labels, input_template, output_template = DATASETS[dataset]
        spec = {"labels": labels, "template": {"input": input_template, "output": output_template}}
        status, body = stack.call("PUT", f"/v1/tasks/{name}", spec)
        assert status == 201, body
        for start in range(0, len(examples), 100):
            batch = [{"id": f"e{start + i}", **row} for i, row in enumerate(examples[start:start + 100])]
            status, body = stack.call("POST", f"/v1/tasks/{name}/examples", {"examples": batch})
            assert status == 201, body
    time.sleep(3)  # every replica has synced the examples
    hits0, misses0 = stack.cache_lookups()
    latencies, failures = [], []
    lock = threading.Lock()

    def client(c):
        rng = random.Random(c)
        for _ in range(requests // clients):
            name, _, _, queries = rng.choice(TASKS)
            body = {"inputs": [{"text": rng.choice(queries)}], "k": 4, "cached_demonstrations": True}
            started = time.perf_counter()
            status, answer = stack.call("POST", f"/v1/tasks/{name}/predict", body)
            elapsed = time.perf_counter() - started
            with lock:
                (latencies if status == 200 else failures).append(elapsed if status == 200 else (status, answer))

    started = time.perf_counter()
    threads = [threading.Thread(target=client, args=(c,)) for c in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    seconds = time.perf_counter() - started
    hits, misses = stack.cache_lookups()
    hits, misses = hits - hits0, misses - misses0
    latencies.sort()
    pick = lambda q: latencies[min(len(latencies) - 1, int(q * len(latencies)))]
    return {
        "hit_rate": hits / max(1.0, hits + misses), "lookups": hits + misses,
        "per_second": len(latencies) / seconds, "p50": pick(0.5), "p99": pick(0.99),
        "answered": len(latencies), "failed": len(failures),
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=600)
    parser.add_argument("--clients", type=int, default=6)
    parser.add_argument("--image", default="exemplar:cpu")
    parser.add_argument("--port", type=int, default=18080)
    args = parser.parse_args()
    shipped = os.path.join(ROOT, "docker/nginx.conf")
    round_robin = os.path.join(tempfile.mkdtemp(prefix="exemplar-nginx-"), "nginx.conf")
    with open(shipped) as f, open(round_robin, "w") as out:
        out.write("".join(line for line in f if not line.strip().startswith("hash ")))
    print(f"| balancing | demonstration-cache hit rate | lookups | predictions/s | p50 | p99 | failed |")
    print("|---|---|---|---|---|---|---|")
    for balancing, conf in [("task affinity (consistent hash)", shipped), ("round-robin", round_robin)]:
        stack = Stack(args.image, conf, args.port)
        try:
            stack.up()
            r = measure(stack, args.requests, args.clients)
        finally:
            stack.down()
        print(f"| {balancing} | {r['hit_rate']:.1%} | {r['lookups']:.0f} | {r['per_second']:.2f} "
              f"| {r['p50'] * 1000:.0f} ms | {r['p99'] * 1000:.0f} ms | {r['failed']} |", flush=True)


TASKS = tasks()

if __name__ == "__main__":
    main()
