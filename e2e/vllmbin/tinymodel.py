"""Builds the tiny model the real-vLLM tier serves: random weights, made here, downloaded from nowhere.

    <vllm venv>/bin/python e2e/vllmbin/tinymodel.py HF_HOME

writes a Hugging Face hub cache under ``HF_HOME`` (``hub/models--inferstack--tiny-llama``,
with ``refs/main`` and ``snapshots/<commit>``), the layout a ``spec.model.cacheVolume``
PVC holds, so vLLM resolves ``--model inferstack/tiny-llama --revision <commit>`` offline
from it exactly as it would in a pod with ``HF_HOME`` and ``HF_HUB_OFFLINE=1``.

The model is a Llama (hidden 128, 2 layers, 4 heads: vLLM's CPU attention needs a
head size of at least 32) with weights from a fixed seed, and a byte-level BPE
tokenizer trained with ``tokenizers`` on text written below, saved with a chat
template. Its answers are gibberish; what matters is that vLLM loads, schedules,
caches and meters it like any other model. The "commit" is a SHA-1 over the
snapshot's files, so the same script and library versions give the same revision.
"""

from __future__ import annotations

import hashlib
import shutil
import sys
import tempfile
from pathlib import Path

REPO_ID = "inferstack/tiny-llama"

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>\\n' + message['content'] + '<|end|>\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% endif %}"
)

# A few KB of text for the tokenizer: support-desk phrases, numbers and punctuation.
_WORDS = [
    "the",
    "a",
    "an",
    "and",
    "or",
    "but",
    "if",
    "then",
    "when",
    "where",
    "why",
    "how",
    "what",
    "who",
    "which",
    "is",
    "are",
    "was",
    "were",
    "be",
    "been",
    "order",
    "refund",
    "parcel",
    "delivery",
    "address",
    "payment",
    "card",
    "charged",
    "twice",
    "invoice",
    "account",
    "password",
    "reset",
    "opening",
    "hours",
    "support",
    "assistant",
    "customer",
    "question",
    "answer",
    "please",
    "thank",
    "you",
    "sorry",
    "help",
    "shipping",
    "billing",
    "general",
    "policy",
    "days",
    "weeks",
    "euro",
    "price",
    "discount",
    "return",
    "label",
    "tracking",
    "number",
    "we",
    "you",
    "they",
    "it",
    "this",
    "that",
    "can",
    "could",
    "should",
    "would",
    "will",
    "may",
    "might",
    "must",
    "not",
    "no",
    "yes",
    "hello",
    "hi",
]


def corpus() -> list[str]:
    lines = []
    for i in range(400):
        words = [_WORDS[(i * 7 + j * 13) % len(_WORDS)] for j in range(12)]
        lines.append(f"{' '.join(words).capitalize()}, {i} {i * 17 % 1000}! ({i % 7}) ok? yes.")
    return lines


def build(out: Path) -> str:
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    specials = ["<|pad|>", "<|begin|>", "<|end|>", "<|system|>", "<|user|>", "<|assistant|>"]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=1024,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus(), trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<|begin|>",
        eos_token="<|end|>",
        pad_token="<|pad|>",
        model_max_length=2048,
    )
    fast.chat_template = CHAT_TEMPLATE

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(fast),
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=2048,
        bos_token_id=fast.bos_token_id,
        eos_token_id=fast.eos_token_id,
        pad_token_id=fast.pad_token_id,
        tie_word_embeddings=False,
        torch_dtype="bfloat16",
    )
    model = LlamaForCausalLM(config).to(torch.bfloat16)

    with tempfile.TemporaryDirectory() as tmp:
        snap = Path(tmp) / "snapshot"
        model.save_pretrained(snap, safe_serialization=True)
        fast.save_pretrained(snap)
        digest = hashlib.sha1()
        for f in sorted(snap.rglob("*")):
            if f.is_file():
                digest.update(f.relative_to(snap).as_posix().encode() + b"\0" + f.read_bytes())
        commit = digest.hexdigest()
        repo = out / "hub" / ("models--" + REPO_ID.replace("/", "--"))
        (repo / "snapshots").mkdir(parents=True, exist_ok=True)
        (repo / "refs").mkdir(exist_ok=True)
        target = repo / "snapshots" / commit
        shutil.rmtree(target, ignore_errors=True)
        shutil.copytree(snap, target)
        (repo / "refs" / "main").write_text(commit)
    return commit


if __name__ == "__main__":
    print(build(Path(sys.argv[1])))
