#!/usr/bin/env python3
"""Makes a tiny random-weight GGUF per supported architecture and, where llama.cpp's
Python binding is installed, what llama.cpp computes on each: the reference tests of
tests/it/architectures.rs compare our forward and tokenizers against these.

    tiny-ggufs.py OUT_DIR

OUT_DIR/{llama,qwen2,qwen3,gemma3}.gguf: two to six layers 64 wide, f32 weights
(seeded, so a rerun writes the same files), each family's optional parts (Qwen2's
biases, Qwen3's query/key norms and wider heads, Gemma 3's post norms, scaled
embeddings, GELU and an 8-token sliding window), and a tokenizer cut from a real one:
the first 1024 entries of SmolLM2's byte-level BPE with the merges among them (with the
`llama-bpe` pre-tokenizer for llama, `qwen2` for Qwen) or of Gemma 3's SentencePiece.
OUT_DIR/{arch}.jsonl: the token ids of hard strings, and for each prompt its ids and
llama.cpp's logits after its last token (KV cache in f32).

OUT_DIR/formats/{format}.gguf and .jsonl: one tiny llama (one layer 256 wide, so that
the K-quants' 256-value blocks fit, 512 tokens) per weight format, every matrix in it
(the embeddings and output head included): f16, bf16, q8_0, q4_0, q4_1, q5_0, q5_1
(quantized from seeded f32 by the gguf package), q4_k, q5_k, q6_k (random blocks: the
package has no K-quant quantizer, and any bytes are valid blocks) and q4_k_m (Q4_K with
Q6_K for attn_v, ffn_down and the output head, as llama.cpp's Q4_K_M mixes them); with
llama.cpp's logits for each prompt.

Pinned: gguf==0.17.1, numpy, llama-cpp-python==0.3.36 (built with AMX off).
"""
import json
import os
import sys

import numpy as np
from gguf import GGUFReader, GGUFWriter, GGMLQuantizationType
from gguf.quants import quantize

HERE = os.path.dirname(os.path.abspath(__file__))
MODELS = os.path.join(HERE, "..", "models")
VOCAB = 1024
HIDDEN, HEADS, KV_HEADS, FFN, CONTEXT = 64, 4, 2, 128, 256

TEXTS = [
    "Hello world",
    " leading space and  two spaces",
    "digits 1234567 and 3.14",
    "line one\r\nline two\n\n\nend",
    "caf\u00e9 e\u0301 \u65e5\u672c \U0001F600",
    "I've can't they're",
    "<|im_start|> <bos> <start_of_turn>",
]
PROMPTS = [
    "Review: the acting was wooden and the plot made no sense.\nSentiment: negative\n\n"
    "Review: a warm, funny film.\nSentiment:",
    "The quick brown fox jumps over the lazy dog 42 times.",
]


def byte_level_tokenizer(vocab=VOCAB):
    """The first `vocab` entries of SmolLM2's vocabulary and the merges among them."""
    reader = GGUFReader(os.path.join(MODELS, "smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"))
    tokens = reader.fields["tokenizer.ggml.tokens"].contents()[:vocab]
    types = reader.fields["tokenizer.ggml.token_type"].contents()[:vocab]
    kept = set(tokens)
    merges = [m for m in reader.fields["tokenizer.ggml.merges"].contents()
              if all(p in kept for p in m.split(" ", 1)) and m.replace(" ", "", 1) in kept]
    return tokens, types, merges


def sentence_piece_tokenizer():
    """The first VOCAB entries of Gemma 3's vocabulary, with their scores."""
    reader = GGUFReader(os.path.join(MODELS, "gemma3", "gemma-3-270m-q4_k_m.gguf"))
    tokens = reader.fields["tokenizer.ggml.tokens"].contents()[:VOCAB]
    types = reader.fields["tokenizer.ggml.token_type"].contents()[:VOCAB]
    scores = reader.fields["tokenizer.ggml.scores"].contents()[:VOCAB]
    return tokens, types, scores


def write(arch, path):
    rng = np.random.RandomState({"llama": 1, "qwen2": 2, "qwen3": 3, "gemma3": 4}[arch])
    gemma = arch == "gemma3"
    blocks = 6 if gemma else 2
    head_dim = 32 if arch in ("qwen3", "gemma3") else HIDDEN // HEADS
    w = GGUFWriter(path, arch)
    w.add_name(f"tiny {arch}")
    w.add_context_length(CONTEXT)
    w.add_embedding_length(HIDDEN)
    w.add_block_count(blocks)
    w.add_feed_forward_length(FFN)
    w.add_head_count(HEADS)
    w.add_head_count_kv(KV_HEADS)
    w.add_layer_norm_rms_eps(1e-6)
    w.add_rope_freq_base(10000.0 if arch == "llama" else 1e6)
    w.add_rope_dimension_count(head_dim)
    if head_dim != HIDDEN // HEADS:
        w.add_key_length(head_dim)
        w.add_value_length(head_dim)
    if gemma:
        w.add_sliding_window(8)
    if gemma:
        tokens, types, scores = sentence_piece_tokenizer()
        w.add_tokenizer_model("llama")
        w.add_tokenizer_pre("default")
        w.add_token_list(tokens)
        w.add_token_types(types)
        w.add_token_scores(scores)
        w.add_bos_token_id(2)
        w.add_eos_token_id(1)
        w.add_unk_token_id(3)
        w.add_add_bos_token(True)
        w.add_add_space_prefix(False)
    else:
        tokens, types, merges = byte_level_tokenizer()
        w.add_tokenizer_model("gpt2")
        w.add_tokenizer_pre("llama-bpe" if arch == "llama" else "qwen2")
        w.add_token_list(tokens)
        w.add_token_types(types)
        w.add_token_merges(merges)
        w.add_bos_token_id(1)
        w.add_eos_token_id(2)
        w.add_add_bos_token(arch == "llama")

    def matrix(rows, cols):
        return (rng.standard_normal((rows, cols)) / np.sqrt(cols)).astype(np.float32)

    def norm(n):
        return (1.0 + 0.1 * rng.standard_normal(n)).astype(np.float32)

    w.add_tensor("token_embd.weight", matrix(VOCAB, HIDDEN))
    w.add_tensor("output_norm.weight", norm(HIDDEN))
    if arch in ("llama", "qwen2"):
        w.add_tensor("output.weight", matrix(VOCAB, HIDDEN))
    for i in range(blocks):
        b = f"blk.{i}."
        w.add_tensor(b + "attn_norm.weight", norm(HIDDEN))
        w.add_tensor(b + "attn_q.weight", matrix(HEADS * head_dim, HIDDEN))
        w.add_tensor(b + "attn_k.weight", matrix(KV_HEADS * head_dim, HIDDEN))
        w.add_tensor(b + "attn_v.weight", matrix(KV_HEADS * head_dim, HIDDEN))
        if arch == "qwen2":
            for part, width in (("q", HEADS), ("k", KV_HEADS), ("v", KV_HEADS)):
                w.add_tensor(b + f"attn_{part}.bias",
                             (0.1 * rng.standard_normal(width * head_dim)).astype(np.float32))
        if arch in ("qwen3", "gemma3"):
            w.add_tensor(b + "attn_q_norm.weight", norm(head_dim))
            w.add_tensor(b + "attn_k_norm.weight", norm(head_dim))
        w.add_tensor(b + "attn_output.weight", matrix(HIDDEN, HEADS * head_dim))
        w.add_tensor(b + "ffn_norm.weight", norm(HIDDEN))
        w.add_tensor(b + "ffn_gate.weight", matrix(FFN, HIDDEN))
        w.add_tensor(b + "ffn_up.weight", matrix(FFN, HIDDEN))
        w.add_tensor(b + "ffn_down.weight", matrix(HIDDEN, FFN))
        if gemma:
            w.add_tensor(b + "post_attention_norm.weight", norm(HIDDEN))
            w.add_tensor(b + "post_ffw_norm.weight", norm(HIDDEN))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


Q = GGMLQuantizationType
FORMATS = {
    "f16": Q.F16, "bf16": Q.BF16, "q8_0": Q.Q8_0, "q4_0": Q.Q4_0, "q4_1": Q.Q4_1,
    "q5_0": Q.Q5_0, "q5_1": Q.Q5_1, "q4_k": Q.Q4_K, "q5_k": Q.Q5_K, "q6_k": Q.Q6_K,
    "q4_k_m": Q.Q4_K,
}
WIDE, WIDE_FFN, WIDE_VOCAB, WIDE_HEADS, WIDE_KV_HEADS = 256, 256, 512, 4, 2
# Per K-quant: bytes per 256 values, where its f16 scales sit, and the scale that gives
# values of about 1/sqrt(WIDE) from random integer fields (Q4_K/Q5_K: d, then dmin, so
# that d * sc * q - dmin * m centres near 0; Q6_K: d * sc * (q - 32)).
K_BLOCKS = {Q.Q4_K: (144, [0, 2], [1 / 4000, 7.5 / 4000]),
            Q.Q5_K: (176, [0, 2], [1 / 8000, 15.5 / 8000]),
            Q.Q6_K: (210, [208], [1 / 20000])}


def random_k_blocks(rng, qtype, rows, cols):
    """Random blocks of a K-quant: any bytes are valid ones; the f16 scales are set."""
    size, at, scales = K_BLOCKS[qtype]
    data = rng.randint(0, 256, size=(rows * cols // 256, size)).astype(np.uint8)
    for offset, scale in zip(at, scales):
        d = (scale * rng.uniform(0.5, 1.5, size=len(data))).astype(np.float16)
        data[:, offset:offset + 2] = d.view(np.uint8).reshape(-1, 2)
    return data.reshape(rows, cols // 256 * size)


def write_format(name, path):
    """A one-layer llama whose matrices are all in format `name`."""
    rng = np.random.RandomState(5)
    head_dim = WIDE // WIDE_HEADS
    w = GGUFWriter(path, "llama")
    w.add_name(f"tiny llama {name}")
    w.add_context_length(CONTEXT)
    w.add_embedding_length(WIDE)
    w.add_block_count(1)
    w.add_feed_forward_length(WIDE_FFN)
    w.add_head_count(WIDE_HEADS)
    w.add_head_count_kv(WIDE_KV_HEADS)
    w.add_layer_norm_rms_eps(1e-6)
    w.add_rope_freq_base(10000.0)
    w.add_rope_dimension_count(head_dim)
    tokens, types, merges = byte_level_tokenizer(WIDE_VOCAB)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("llama-bpe")
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(merges)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_add_bos_token(True)

    def matrix(tensor, rows, cols):
        qtype = FORMATS[name]
        if name == "q4_k_m" and tensor in ("attn_v", "ffn_down", "output"):
            qtype = Q.Q6_K
        if qtype in K_BLOCKS:
            return random_k_blocks(rng, qtype, rows, cols), qtype
        values = (rng.standard_normal((rows, cols)) / np.sqrt(cols)).astype(np.float32)
        if qtype == Q.F16:
            return values.astype(np.float16), None
        return quantize(values, qtype), qtype

    def add(tensor_name, rows, cols):
        data, qtype = matrix(tensor_name.split(".")[-2], rows, cols)
        w.add_tensor(tensor_name, data, raw_dtype=qtype)

    def norm(n):
        return (1.0 + 0.1 * rng.standard_normal(n)).astype(np.float32)

    add("token_embd.weight", WIDE_VOCAB, WIDE)
    w.add_tensor("output_norm.weight", norm(WIDE))
    add("output.weight", WIDE_VOCAB, WIDE)
    b = "blk.0."
    w.add_tensor(b + "attn_norm.weight", norm(WIDE))
    add(b + "attn_q.weight", WIDE_HEADS * head_dim, WIDE)
    add(b + "attn_k.weight", WIDE_KV_HEADS * head_dim, WIDE)
    add(b + "attn_v.weight", WIDE_KV_HEADS * head_dim, WIDE)
    add(b + "attn_output.weight", WIDE, WIDE_HEADS * head_dim)
    w.add_tensor(b + "ffn_norm.weight", norm(WIDE))
    add(b + "ffn_gate.weight", WIDE_FFN, WIDE)
    add(b + "ffn_up.weight", WIDE_FFN, WIDE)
    add(b + "ffn_down.weight", WIDE, WIDE_FFN)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def reference(path, out, texts=TEXTS):
    from llama_cpp import Llama
    llm = Llama(model_path=path, n_ctx=CONTEXT, n_threads=os.cpu_count(), logits_all=True,
                type_k=0, type_v=0, verbose=False)
    with open(out, "w") as f:
        for text in texts:
            ids = llm.tokenize(text.encode(), add_bos=False, special=False)
            f.write(json.dumps({"text": text, "ids": ids}) + "\n")
        for prompt in PROMPTS:
            ids = llm.tokenize(prompt.encode(), add_bos=True, special=False)
            llm.reset()
            llm.eval(ids)
            logits = [round(float(v), 6) for v in llm.scores[len(ids) - 1]]
            f.write(json.dumps({"prompt": prompt, "prompt_ids": ids, "logits": logits}) + "\n")


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    out = sys.argv[1]
    os.makedirs(out, exist_ok=True)
    files = [(os.path.join(out, f"{arch}.gguf"), lambda p, a=arch: write(a, p), TEXTS)
             for arch in ("llama", "qwen2", "qwen3", "gemma3")]
    os.makedirs(os.path.join(out, "formats"), exist_ok=True)
    files += [(os.path.join(out, "formats", f"{name}.gguf"),
               lambda p, n=name: write_format(n, p), []) for name in FORMATS]
    for path, make, texts in files:
        make(path)
        try:
            reference(path, path.replace(".gguf", ".jsonl"), texts)
        except ImportError:
            print("llama_cpp is not installed: wrote the GGUFs only", file=sys.stderr)
        print(f"{path}: {os.path.getsize(path)} bytes")


if __name__ == "__main__":
    main()
