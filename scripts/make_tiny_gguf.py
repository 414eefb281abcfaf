#!/usr/bin/env python3
"""Write a tiny random-weight llama GGUF (about 0.7 MB) that a CPU Ollama can serve.

The weights are random normals from a fixed seed, so the file is byte-for-byte the same on
every run: the model answers chat, generate and embed with gibberish, in milliseconds.

Layout (what Ollama's llama loader needs): 2 blocks, 64-dim embeddings, 4 heads (4 KV heads),
feed-forward 256, rope dimension 16, F32 tensors; a SentencePiece-style ("llama") vocabulary
of <unk>, <s>, </s>, the 256 byte tokens and a few word pieces.

Usage: make_tiny_gguf.py OUTPUT.gguf [--seed N]
"""

from __future__ import annotations

import argparse
import os

import gguf
import numpy as np

CONTEXT_LENGTH = 2048
EMBED = 64
BLOCKS = 2
FFN = 256
HEADS = 4
HEADS_KV = 4
ROPE_DIM = EMBED // HEADS  # 16

# A few whole-word pieces ("▁" marks a leading space, as in SentencePiece) so that
# decoded output is sometimes made of words rather than only bytes.
WORD_PIECES = [
    "▁",
    "▁the",
    "▁a",
    "▁of",
    "▁and",
    "▁to",
    "▁is",
    "▁in",
    "▁it",
    "▁hello",
    "▁world",
    "▁mesh",
    "▁node",
    "▁model",
    "▁token",
    "▁yes",
    "▁no",
    "ing",
    "ed",
    "s",
    ".",
    ",",
]

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>\n' + message['content'] + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}"
)


def vocabulary() -> tuple[list[str], list[float], list[int]]:
    tokens: list[str] = []
    scores: list[float] = []
    types: list[int] = []

    def add(text: str, score: float, kind: gguf.TokenType) -> None:
        tokens.append(text)
        scores.append(score)
        types.append(int(kind))

    add("<unk>", 0.0, gguf.TokenType.UNKNOWN)  # id 0
    add("<s>", 0.0, gguf.TokenType.CONTROL)  # id 1
    add("</s>", 0.0, gguf.TokenType.CONTROL)  # id 2
    for b in range(256):
        add(f"<0x{b:02X}>", 0.0, gguf.TokenType.BYTE)
    for i, piece in enumerate(WORD_PIECES):
        add(piece, -1.0 - i, gguf.TokenType.NORMAL)
    return tokens, scores, types


def write(path: str, seed: int) -> None:
    rng = np.random.default_rng(seed)
    tokens, scores, types = vocabulary()
    vocab = len(tokens)

    def normal(*shape: int) -> np.ndarray:
        return (rng.standard_normal(shape) * 0.02).astype(np.float32)

    def ones(n: int) -> np.ndarray:
        return np.ones(n, dtype=np.float32)

    tmp = f"{path}.partial"
    w = gguf.GGUFWriter(tmp, "llama")
    w.add_name("tiny")
    w.add_context_length(CONTEXT_LENGTH)
    w.add_embedding_length(EMBED)
    w.add_block_count(BLOCKS)
    w.add_feed_forward_length(FFN)
    w.add_head_count(HEADS)
    w.add_head_count_kv(HEADS_KV)
    w.add_rope_dimension_count(ROPE_DIM)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_vocab_size(vocab)
    w.add_file_type(gguf.LlamaFileType.ALL_F32)

    w.add_tokenizer_model("llama")
    w.add_token_list(tokens)
    w.add_token_scores(scores)
    w.add_token_types(types)
    w.add_unk_token_id(0)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_add_bos_token(True)
    w.add_add_eos_token(False)
    w.add_chat_template(CHAT_TEMPLATE)

    # numpy shapes; the writer stores GGUF dimensions in reverse order.
    w.add_tensor("token_embd.weight", normal(vocab, EMBED))
    for n in range(BLOCKS):
        w.add_tensor(f"blk.{n}.attn_norm.weight", ones(EMBED))
        for part in ("attn_q", "attn_k", "attn_v", "attn_output"):
            w.add_tensor(f"blk.{n}.{part}.weight", normal(EMBED, EMBED))
        w.add_tensor(f"blk.{n}.ffn_norm.weight", ones(EMBED))
        w.add_tensor(f"blk.{n}.ffn_gate.weight", normal(FFN, EMBED))
        w.add_tensor(f"blk.{n}.ffn_up.weight", normal(FFN, EMBED))
        w.add_tensor(f"blk.{n}.ffn_down.weight", normal(EMBED, FFN))
    w.add_tensor("output_norm.weight", ones(EMBED))
    w.add_tensor("output.weight", normal(vocab, EMBED))

    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    os.replace(tmp, path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("output", help="path of the GGUF file to write")
    parser.add_argument("--seed", type=int, default=20240917, help="random seed for the weights")
    args = parser.parse_args()
    write(args.output, args.seed)


if __name__ == "__main__":
    main()
