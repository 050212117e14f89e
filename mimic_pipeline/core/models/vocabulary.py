"""The tiny model's tokenizer, built from the project's own vocabulary.

Word level: every word of every question template, every category and parent name (singular and
plural), the numbers 0..MAX_NUMBER in digits and words, yes/no and punctuation. A word-level
vocabulary keeps answers short (a count is one token, "square, triangle" three), which is what lets
a model of a few hundred thousand parameters learn them on a CPU in minutes.

Pre-tokenization marks word starts with "▁" (Metaspace) and splits punctuation off, so decoding
restores "square, triangle" exactly. Text is lower-cased, newlines become spaces and the text
between special tokens is stripped. The result is
an ordinary `PreTrainedTokenizerFast`: `save_pretrained` / `AutoTokenizer.from_pretrained` work,
and it carries the chat template (Qwen / LLaVA-OneVision style, one `<image>` per image item).
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from tokenizers import Tokenizer, decoders, normalizers, pre_tokenizers
from tokenizers.models import WordLevel
from transformers import PreTrainedTokenizerFast

from ..sampling.single_image import QUESTIONS as SINGLE_IMAGE_QUESTIONS
from ..sampling.templates import TEMPLATES
from ..text import number_word, pluralize

PAD, UNK, IMAGE = "<pad>", "<unk>", "<image>"
IM_START, IM_END = "<|im_start|>", "<|im_end|>"
SPECIAL_TOKENS = [PAD, UNK, IM_START, IM_END, IMAGE]
MAX_NUMBER = 100
WORD_START = "\u2581"

# Rendered exactly like LLaVA-OneVision's template (newlines become spaces inside the tokenizer).
CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}<image>{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

_WORDS = re.compile(r"[a-z0-9]+|[^a-z0-9\s]")


def vocabulary_words(category_names: Iterable[str], parent_names: Iterable[str] = ()) -> list[str]:
    """Every word the tiny model may read or write, sorted (deterministic token ids)."""
    texts = [*TEMPLATES_TEXT, *SINGLE_IMAGE_QUESTIONS.values(), "user assistant system yes no and none"]
    for name in [*category_names, *parent_names]:
        texts += [name, pluralize(name)]
    texts += [str(n) for n in range(MAX_NUMBER + 1)] + [number_word(n) for n in range(MAX_NUMBER)]
    words = set()
    for text in texts:
        words.update(_WORDS.findall(re.sub(r"\{[a-z_]+\}", " ", text.lower())))
    words.update(("this", "image", "these", "images", "every", "one", "of", "in", "total"))
    return sorted(words)


TEMPLATES_TEXT = [template for templates in TEMPLATES.values() for template in templates]


def build_tokenizer(category_names: Iterable[str], parent_names: Iterable[str] = ()) -> PreTrainedTokenizerFast:
    words = vocabulary_words(category_names, parent_names)
    vocab = {token: i for i, token in enumerate(SPECIAL_TOKENS)}
    for word in words:
        # a word is either a start-of-word token ("▁square") or a piece glued to the previous one (",")
        key = word if not word[0].isalnum() else WORD_START + word
        vocab.setdefault(key, len(vocab))
        vocab.setdefault(word, len(vocab))  # the same word right after punctuation ("-one" in "twenty-one")
    vocab.setdefault(WORD_START, len(vocab))  # a lone word start, from doubled spaces
    core = Tokenizer(WordLevel(vocab, unk_token=UNK))
    # each stretch between special tokens is stripped: no lone word-start tokens around the chat markers
    core.normalizer = normalizers.Sequence(
        [normalizers.Replace("\n", " "), normalizers.Strip(), normalizers.Lowercase()]
    )
    core.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Metaspace(replacement=WORD_START, prepend_scheme="first"), pre_tokenizers.Punctuation()]
    )
    core.decoder = decoders.Metaspace(replacement=WORD_START, prepend_scheme="first")
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core, pad_token=PAD, unk_token=UNK, eos_token=IM_END, bos_token=None,
        additional_special_tokens=[IM_START, IMAGE], padding_side="left", clean_up_tokenization_spaces=False,
    )  # fmt: skip
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer
