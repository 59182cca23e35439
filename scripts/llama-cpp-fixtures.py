#!/usr/bin/env python3
"""Writes what llama.cpp makes of a GGUF, for the reference tests to compare against.

    llama-cpp-fixtures.py MODEL.gguf OUT_DIR [PROMPTS.jsonl]

OUT_DIR/tokens.jsonl: {"text", "ids"} for a corpus of hard strings (digit and
whitespace runs, CRLF, accents and combining marks, CJK, emoji, code, special-token
spellings in user text), tokenized without BOS and without parsing special tokens, as
user text is. OUT_DIR/next-token.jsonl: for each prompt ({"prompt"} rows of
PROMPTS.jsonl, default: the SmolLM2 fixture's prompts in ../shared), the prompt's ids
(with BOS where the file asks for it), llama.cpp's top-5 next tokens with their
log-probabilities, and its greedy continuation of 8 tokens.

Needs the llama-cpp-python package (pip install llama-cpp-python==0.3.36; build it
with the AMX kernels off on a Xeon whose hypervisor does not enable them).
"""
import json
import math
import os
import sys

from llama_cpp import Llama

HARD_STRINGS = [
    "Hello world",
    " Hello world",
    "hello  world",
    "   leading and trailing   ",
    "digits 1234567890 and 3.14159, 1,000,000",
    "tabs\tand\t\tmore\ttabs",
    "line one\r\nline two\r\n\r\nline four",
    "new\n\n\nlines\n",
    "caf\u00e9 na\u00efve r\u00e9sum\u00e9 \u00c5ngstr\u00f6m",
    "e\u0301 a\u0300 combining marks",
    "\u65e5\u672c\u8a9e\u306e\u30c6\u30ad\u30b9\u30c8 \u4e2d\u6587 \ud55c\uad6d\uc5b4",
    "emoji \U0001F600 \U0001F469\u200d\U0001F469\u200d\U0001F467 \u2764\ufe0f",
    "def f(x):\n    return x ** 2  # square\n",
    "if (a != b && c <= d) { return [1, 2, 3]; }",
    "<bos> <eos> <start_of_turn>user <|im_start|> <|endoftext|> [INST] </s>",
    "<unused0> <mask> [multimodal]",
    "I've can't won't they're we'll she'd it's",
    "URL: https://example.com/path?q=1&r=two#frag",
    "\u00bfQu\u00e9 tal? \u00a1Muy bien! \u00ab\u00a0guillemets\u00a0\u00bb",
    "\u0645\u0631\u062d\u0628\u0627 \u05e9\u05dc\u05d5\u05dd \u0928\u092e\u0938\u094d\u0924\u0947",
    "a stirring , funny and finally transporting re-imagining of beauty and the beast",
    "What is the capital of France?",
    "Review: the acting was wooden.\nSentiment: negative\n\nReview:",
    "",
]


def log_softmax(row):
    top = max(row)
    total = math.log(sum(math.exp(v - top) for v in row)) + top
    return [v - total for v in row]


def main():
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    model, out = sys.argv[1], sys.argv[2]
    here = os.path.dirname(os.path.abspath(__file__))
    prompts_file = sys.argv[3] if len(sys.argv) > 3 else os.path.join(
        here, "..", "..", "shared", "fixtures", "smollm2-next-token.jsonl")
    os.makedirs(out, exist_ok=True)
    llm = Llama(model_path=model, n_ctx=2048, n_threads=os.cpu_count(), logits_all=True,
                verbose=False)

    with open(os.path.join(out, "tokens.jsonl"), "w") as f:
        for text in HARD_STRINGS:
            ids = llm.tokenize(text.encode(), add_bos=False, special=False)
            f.write(json.dumps({"text": text, "ids": ids}) + "\n")

    prompts = [json.loads(line)["prompt"] for line in open(prompts_file) if line.strip()]
    with open(os.path.join(out, "next-token.jsonl"), "w") as f:
        for prompt in prompts:
            # llama.cpp adds BOS where the file's add_bos_token asks for it.
            ids = llm.tokenize(prompt.encode(), add_bos=True, special=False)
            llm.reset()
            llm.eval(ids)
            logprobs = log_softmax([float(v) for v in llm.scores[len(ids) - 1]])
            top5 = sorted(range(len(logprobs)), key=lambda i: -logprobs[i])[:5]
            greedy = [top5[0]]
            while len(greedy) < 8:
                llm.eval([greedy[-1]])
                row = llm.scores[llm.n_tokens - 1]
                greedy.append(int(max(range(len(row)), key=lambda i: row[i])))
            f.write(json.dumps({
                "prompt": prompt,
                "prompt_ids": ids,
                "greedy_ids": greedy,
                "greedy_text": llm.detokenize(greedy).decode("utf-8", "replace"),
                "top5_first": [{"id": i, "logprob": logprobs[i]} for i in top5],
            }) + "\n")


if __name__ == "__main__":
    main()
