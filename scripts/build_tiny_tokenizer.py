"""Regenerate tarpo/assets/tiny-tokenizer/ (the `tiny` preset's tokenizer), bit-identically.

Why a tokenizer of our own: with a real 150k vocabulary the output layer dominates a tiny model's cost
(its logits row per token costs more than the rest of the model). This one is a ~512-token byte-level BPE
trained on a seeded corpus of arithmetic word problems, with digits split one per token (helps arithmetic) and
Qwen-style chat special tokens and template.

Usage: python scripts/build_tiny_tokenizer.py [OUT_DIR]
"""

from __future__ import annotations

import random
import sys
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

VOCAB_SIZE = 512
PAD, BOS_CHAT, EOS = "<|endoftext|>", "<|im_start|>", "<|im_end|>"
SPECIAL_TOKENS = [PAD, BOS_CHAT, EOS]
CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}"
)
DEFAULT_OUT = Path(__file__).resolve().parents[1] / "tarpo" / "assets" / "tiny-tokenizer"

NAMES = ["Tom", "Anna", "Sam", "Mia", "Leo", "Ava", "Ben", "Zoe", "Max", "Eva", "John", "Lily"]
ITEMS = ["apples", "pens", "books", "coins", "cards", "eggs", "cookies", "marbles", "stickers", "toys"]
VERBS = ["buys", "gets", "finds", "receives", "makes", "sells", "gives away", "loses", "eats", "uses"]
CHAT_WORDS = ["system", "user", "assistant", "You are a helpful assistant.",
              "Solve the problem step by step. Put the final answer after ####."]


def corpus(n_problems: int = 4000, seed: int = 0) -> list[str]:
    """Seeded word problems + worked answers, the shapes the synthetic task and chat prompts use."""
    rng = random.Random(seed)
    lines = list(CHAT_WORDS)
    for _ in range(n_problems):
        name, item = rng.choice(NAMES), rng.choice(ITEMS)
        a, b, c = rng.randint(0, 999), rng.randint(1, 99), rng.randint(1, 12)
        verb = rng.choice(VERBS)
        op = rng.choice("+-*/")
        question = (f"{name} has {a} {item}. {name} {verb} {b} more {item}, then each group of {c} is counted. "
                    f"How many {item} does {name} have in total?")
        result = {"+": a + b, "-": a - b, "*": a * b, "/": a // max(b, 1)}[op]
        answer = f"{a} {op} {b} = {result}. The total is {result}. #### {result}"
        lines.append(f"{BOS_CHAT}user\n{question}{EOS}\n{BOS_CHAT}assistant\n{answer}{EOS}")
    return lines


def build(out_dir: Path) -> None:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=VOCAB_SIZE, special_tokens=SPECIAL_TOKENS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(corpus(), trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token=PAD, eos_token=EOS, unk_token=None,
                                   bos_token=None, additional_special_tokens=[BOS_CHAT],
                                   model_max_length=2048, padding_side="left", clean_up_tokenization_spaces=False)
    fast.chat_template = CHAT_TEMPLATE
    out_dir.mkdir(parents=True, exist_ok=True)
    fast.save_pretrained(str(out_dir))


if __name__ == "__main__":
    build(Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_OUT)
