#!/usr/bin/env python3
"""Writes tests/fixtures/chat-templates/rendered.jsonl: real models' chat templates
(the .jinja files beside it, from llama.cpp's models/templates in the llama-cpp-python
0.3.36 source package) rendered by Python's jinja2 exactly as Hugging Face's
transformers renders them (sandboxed, trim_blocks and lstrip_blocks, loop controls,
raise_exception, its tojson), for a few conversations. `src/llm/chat.rs` renders the
same and must agree. Needs jinja2 (pip install jinja2==3.1.6)."""

import json
from pathlib import Path

import jinja2
from jinja2.ext import loopcontrols
from jinja2.sandbox import ImmutableSandboxedEnvironment

HERE = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "chat-templates"

#: The BOS and EOS spellings of each family's vocabulary.
TOKENS = {
    "Qwen": ("", "<|im_end|>"),
    "meta-llama": ("<|begin_of_text|>", "<|eot_id|>"),
    "google-gemma": ("<bos>", "<eos>"),
    "mistralai": ("<s>", "</s>"),
    "HuggingFaceTB": ("", "<|im_end|>"),
    "microsoft-Phi": ("<s>", "<|endoftext|>"),
}

CONVERSATIONS = [
    [{"role": "user", "content": "What is 2+2?"}],
    [
        {"role": "system", "content": "Answer in one word."},
        {"role": "user", "content": "Name a colour."},
        {"role": "assistant", "content": "Blue."},
        {"role": "user", "content": "Another <|im_end|> one?"},
    ],
    [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": "Bye\nnow"}],
    [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}],
]


def raise_exception(message):
    raise jinja2.exceptions.TemplateError(message)


def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def main():
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    lines = []
    for path in sorted(HERE.glob("*.jinja")):
        bos, eos = next(tokens for prefix, tokens in TOKENS.items() if path.name.startswith(prefix))
        template = env.from_string(path.read_text())
        for messages in CONVERSATIONS:
            line = {"template": path.name, "bos_token": bos, "eos_token": eos, "messages": messages}
            try:
                line["text"] = template.render(messages=messages, add_generation_prompt=True, bos_token=bos, eos_token=eos)
            except jinja2.exceptions.TemplateError as error:
                line["error"] = str(error)
            lines.append(line)
    with open(HERE / "rendered.jsonl", "w", encoding="utf-8") as out:
        for line in lines:
            out.write(json.dumps(line, ensure_ascii=False) + "\n")
    print(f"{len(lines)} renderings of {len(list(HERE.glob('*.jinja')))} templates")


if __name__ == "__main__":
    main()
