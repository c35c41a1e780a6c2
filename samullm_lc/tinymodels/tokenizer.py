"""A small byte-level BPE tokenizer, trained in code on a generated English-like corpus.

The tiny test models need a real tokenizer that vLLM and transformers can load, but nothing may be
downloaded. So the corpus is produced here from a fixed word list by a hand-written linear
congruential generator (no dependence on Python's ``random`` or hash seeds), and a byte-level BPE is
trained on it with the ``tokenizers`` library. Byte-level means every string, in any script, encodes
without unknown tokens and decodes back (exactly for the GPT-2 style; NFC-normalized for the Qwen2
style, which transformers imposes on every ``qwen2`` model). The same inputs give the same
``tokenizer.json`` bytes on every machine.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Literal

from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

BOS_TOKEN = "<|bos|>"
EOS_TOKEN = "<|eos|>"
PAD_TOKEN = "<|pad|>"
SYSTEM_TOKEN = "<|system|>"
USER_TOKEN = "<|user|>"
ASSISTANT_TOKEN = "<|assistant|>"
# Order fixes the ids: <|bos|> = 0, <|eos|> = 1, <|pad|> = 2, then the role markers.
SPECIAL_TOKENS: tuple[str, ...] = (BOS_TOKEN, EOS_TOKEN, PAD_TOKEN, SYSTEM_TOKEN, USER_TOKEN, ASSISTANT_TOKEN)
# 256 byte symbols plus the special tokens; any vocabulary must be larger than this.
MIN_VOCAB_SIZE = 256 + len(SPECIAL_TOKENS)

# How text is split before BPE. "gpt2": GPT-2's byte-level regex, no normalization, so every string
# decodes back exactly. "qwen2": what transformers' Qwen2Tokenizer rebuilds whatever tokenizer.json
# says (NFC normalization, Qwen's split regex), so the file matches what vLLM actually runs; text comes
# back NFC-normalized.
PreTokenizerStyle = Literal["gpt2", "qwen2"]
QWEN2_PRETOKENIZE_REGEX = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"""
    r"""|\s*[\r\n]+|\s+(?!\S)|\s+"""
)

# A turn is "<|role|>\n{content}<|eos|>\n"; the generation prompt opens an assistant turn.
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>\\n' + message['content'] + eos_token + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% endif %}"
)

_WORDS = """
the of and to a in is it you that he was for on are with as his they be at one have this from or
had by hot word but what some we can out other were all there when up use your how said an each
she which do their time if will way about many then them write would like so these her long make
thing see him two has look more day could go come did number sound no most people my over know
water than call first who may down side been now find any new work part take get place made live
where after back little only round man year came show every good me give our under name very
through just form sentence great think say help low line differ turn cause much mean before move
right boy old too same tell does set three want air well also play small end put home read hand
port large spell add even land here must big high such follow act why ask men change went light
kind off need house picture try us again animal point mother world near build self earth father
head stand own page should country found answer school grow study still learn plant cover food
sun four between state keep eye never last let thought city tree cross farm hard start might story
saw far sea draw left late run while press close night real life few north open seem together next
white children begin got walk example ease paper group always music those both mark often letter
until mile river car feet care second book carry took science eat room friend began idea fish
mountain stop once base hear horse cut sure watch color face wood main enough plain girl usual
young ready above ever red list though feel talk bird soon body dog family direct pose leave song
measure door product black short numeral class wind question happen complete ship area half rock
order fire south problem piece told knew pass since top whole king space heard best hour better
true during hundred five remember step early hold west ground interest reach fast verb sing listen
six table travel less morning ten simple several vowel toward war lay against pattern slow center
love person money serve appear road map rain rule govern pull cold notice voice unit power town
fine certain fly fall lead cry dark machine note wait plan figure star box noun field rest correct
able pound done beauty drive stood contain front teach week final gave green quick develop ocean
warm free minute strong special mind behind clear tail produce fact street inch multiply nothing
course stay wheel full force blue object decide surface deep moon island foot system busy test
record boat common gold possible plane stead dry wonder laugh thousand ago ran check game shape
equate miss brought heat snow tire bring yes distant fill east paint language among model engine
token server request batch memory speed latency throughput queue cluster schedule measure
""".split()

_PUNCTUATION = (".", ".", ".", "?", "!")
_CORPUS_SENTENCES = 4000
_LCG_MULTIPLIER = 6364136223846793005
_LCG_INCREMENT = 1442695040888963407
_LCG_MODULUS = 2**64


class _Lcg:
    """A 64-bit linear congruential generator: identical draws on every platform and Python version."""

    def __init__(self, seed: int) -> None:
        self._state = seed % _LCG_MODULUS

    def below(self, n: int) -> int:
        """Return an integer in ``[0, n)`` from the high bits of the next state."""
        self._state = (self._state * _LCG_MULTIPLIER + _LCG_INCREMENT) % _LCG_MODULUS
        return (self._state >> 33) * n >> 31

    def word(self) -> str:
        """Return a word, common ones far more often (roughly Zipf-like: the minimum of two draws)."""
        return _WORDS[min(self.below(len(_WORDS)), self.below(len(_WORDS)))]


def corpus_lines(seed: int = 0, sentences: int = _CORPUS_SENTENCES) -> Iterator[str]:
    """Yield the generated English-like training sentences, the same for the same arguments."""
    rng = _Lcg(seed)
    for _ in range(sentences):
        words = [rng.word() for _ in range(4 + rng.below(12))]
        if rng.below(5) == 0:
            words.insert(rng.below(len(words)), str(rng.below(2000)))
        if rng.below(4) == 0:
            at = 1 + rng.below(len(words) - 1)
            words[at - 1] += ","
        words[0] = words[0].capitalize()
        yield " ".join(words) + _PUNCTUATION[rng.below(len(_PUNCTUATION))]


def _set_pipeline(tokenizer: Tokenizer, style: PreTokenizerStyle) -> None:
    """Give ``tokenizer`` the normalizer, pre-tokenizer and decoder of ``style``."""
    if style == "qwen2":
        tokenizer.normalizer = normalizers.NFC()
        tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
            [
                pre_tokenizers.Split(Regex(QWEN2_PRETOKENIZE_REGEX), behavior="isolated", invert=False),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
            ]
        )
    else:
        tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tokenizer.decoder = decoders.ByteLevel()


def train_tokenizer(vocab_size: int, style: PreTokenizerStyle = "gpt2", seed: int = 0) -> Tokenizer:
    """Train a byte-level BPE with exactly ``vocab_size`` tokens, the special tokens first."""
    if vocab_size <= MIN_VOCAB_SIZE:
        raise ValueError(f"vocab_size must exceed {MIN_VOCAB_SIZE} (256 bytes + special tokens), got {vocab_size}")
    tokenizer = Tokenizer(models.BPE())
    _set_pipeline(tokenizer, style)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(corpus_lines(seed), trainer=trainer)
    if tokenizer.get_vocab_size() != vocab_size:
        raise ValueError(f"the corpus yields only {tokenizer.get_vocab_size()} tokens; asked for {vocab_size}")
    return tokenizer
