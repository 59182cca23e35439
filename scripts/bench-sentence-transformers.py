"""sentence-transformers' embedding speed on the same sentences as `exemplar bench`.

`exemplar bench --suite models --sentence-transformers PYTHON` runs this script with
PYTHON (an interpreter with sentence-transformers and torch installed, for instance the
venv made by `scripts/install-sentence-transformers.sh`) and prints its figure beside
ours. Arguments: MODEL_DIR DATA_JSONL THREADS REPEATS. Prints one JSON object:
{"sentences_per_s": ..., "torch": ..., "sentence_transformers": ...}.
"""

import json
import statistics
import sys
import time

import sentence_transformers
import torch

SENTENCES = 32 * 8
BATCH = 32


def main() -> None:
    model_dir, data, threads, repeats = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    torch.set_num_threads(threads)
    with open(data, encoding="utf-8") as lines:
        texts = [json.loads(line)["text"] for line in lines if line.strip()][:SENTENCES]
    model = sentence_transformers.SentenceTransformer(model_dir, device="cpu")

    def run() -> None:
        for start in range(0, len(texts), BATCH):
            model.encode(texts[start : start + BATCH], batch_size=BATCH)

    run()
    samples = []
    for _ in range(max(1, repeats)):
        started = time.perf_counter()
        run()
        samples.append(time.perf_counter() - started)
    print(
        json.dumps(
            {
                "sentences_per_s": len(texts) / statistics.median(samples),
                "torch": torch.__version__,
                "sentence_transformers": sentence_transformers.__version__,
            }
        )
    )


if __name__ == "__main__":
    main()
