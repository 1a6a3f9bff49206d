"""Text cleaning: any Unicode text in, text over the 128-symbol vocabulary out.

Cleaning is a fixed sequence of small pure steps, each a named function here:

1. ``normalise_newlines``: CRLF and lone CR become LF.
2. ``fold_ascii``: every non-ASCII character is transliterated with ``anyascii``
   (ISC licence): ``naïve café “quoted” — dash`` -> ``naive cafe "quoted" - dash``,
   ``ß`` -> ``ss``, ``…`` -> ``...``, ``£`` -> ``GBP``, ``日本`` -> ``RiBen``. Characters
   anyascii cannot map (zero-width marks, U+200E, lone combining accents) give ``''``
   and are dropped; so is U+FFFD, the mark of bytes lost by an earlier bad decode
   (anyascii would turn it into ``?``, and runs of them into ``?????``).
3. ``remove_controls``: tab, VT and FF become a space; every other control code
   (everything below 32 except newline, and DEL) is dropped.
4. ``remove_symbol_runs``: a run of ``min_symbol_run`` or more *identical* symbols
   (characters that are neither letters, digits nor whitespace) becomes one space,
   so ``=======``, ``*****`` and ``word----word`` -> ``word word`` go while
   ``...``, ``?!``, ``--`` and mixed punctuation such as ``..."`` or ``,--"`` stay.
   (Mixed runs are not removed: on the shared corpus nearly all of them are real
   punctuation, e.g. ``...?`` and ``..."``.) ``....`` is a run of four and goes.
5. ``normalise_spaces``: runs of spaces collapse to one; spaces before a newline
   and at the end of the text are removed. Newlines, blank lines included, stay.
6. ``strip_speaker_tags`` (only with ``strip_speaker_tags=True``): transcript
   speaker tags at the start of a line are removed: one or more matches of
   ``\\*?[A-Z]{1,3}: `` (after step 3 a tag's tab is a space), as in ``A:\\tyes``
   (2024 switchboard) or ``*CHI: more`` (CHILDES). ``A: B: ok`` -> ``ok``.

The output holds only ``babyssm.data.vocab.TEXT_IDS`` symbols (newline and 32..126).
``clean_text`` is idempotent, and ``StreamCleaner`` cleans text fed in arbitrary
pieces to exactly the same output (and the same ``CleanStats``) as ``clean_text``
on the whole, in memory bounded by the piece size (see ``StreamCleaner``).

Symbols: N ``min_symbol_run``.

>>> clean_text("naïve café “quoted” — dash")
'naive cafe "quoted" - dash'
>>> clean_text("Title\\r\\n=======\\r\\nWell...  ok\\t \\n")
'Title\\n\\nWell... ok\\n'
>>> clean_text("A:\\tyes.\\nB: no.", CleanConfig(strip_speaker_tags=True))
'yes.\\nno.'
>>> clean_text_stats("it’s ****\\x07 fine")[1].as_dict()["symbol_runs"]
1
"""

from __future__ import annotations

import dataclasses
import functools
import re
import unicodedata
from dataclasses import dataclass

from anyascii import anyascii

from babyssm.errors import BabySSMError

# ASCII punctuation: the characters step 4 treats as symbols.
_SYMBOL_CLASS = r"!-/:-@\[-`{-~"
_NON_ASCII = re.compile(r"[^\x00-\x7f]+")
_CONTROL = re.compile(r"[\x00-\x08\x0e-\x1f\x7f]")  # \t \n \v \f \r are handled apart
_SPACE_RUN = re.compile(r" {2,}")
_TAGS = re.compile(r"^(?:\*?[A-Z]{1,3}: )+", re.MULTILINE)
# What a line may start with while it can still turn into a speaker tag.
_PARTIAL_TAG = re.compile(r"\*?[A-Z]{0,3}:?")


@dataclass(frozen=True)
class CleanConfig:
    min_symbol_run: int = 4  # N: a run of N+ identical symbols (=====) is removed
    strip_speaker_tags: bool = False  # drop "A: " / "*CHI: " tags at line start

    def __post_init__(self):
        if self.min_symbol_run < 2:
            raise BabySSMError(
                f"min_symbol_run must be at least 2 (got {self.min_symbol_run}); "
                "1 would delete all punctuation"
            )


@dataclass
class CleanStats:
    """What cleaning changed, in characters of the input unless said otherwise."""

    folded: int = 0  # non-ASCII characters transliterated to ASCII
    dropped: int = 0  # characters removed outright: unmappable, U+FFFD, control codes
    symbol_runs: int = 0  # runs of N+ identical symbols removed (count of runs)
    symbol_chars: int = 0  # characters in those runs
    spaces: int = 0  # spaces removed by collapsing runs and stripping line ends
    speaker_tags: int = 0  # speaker tags removed

    def as_dict(self) -> dict[str, int]:
        return dataclasses.asdict(self)


@functools.lru_cache(maxsize=None)
def _fold_char(ch: str) -> str:
    return "" if ch == "\ufffd" else anyascii(ch)


# Where an export's tokenizer must replay fold_ascii on punctuation (``punctuation_folds``):
# Latin-1 Supplement and General Punctuation, the minus sign, the byte-order mark, U+FFFD.
_TOKENIZER_FOLD_CODES = (*range(0x80, 0x100), *range(0x2000, 0x2070), 0x2212, 0xFEFF, 0xFFFD)


def punctuation_folds() -> dict[str, str]:
    """{character: what ``fold_ascii`` makes of it} for the punctuation, spaces and symbols of
    those blocks where Unicode's NFKD with accents stripped (all a ``tokenizers`` normalizer
    can run) gives something else. Letters, digits and currency signs are left out: an
    export's tokenizer maps what it cannot fold to UNK (``babyssm.hf.export``).

    >>> folds = punctuation_folds()
    >>> folds["\u201c"], folds["\u2014"], folds["\u00ab"], "\u2026" in folds  # NFKD gives "..." already
    ('"', '-', '<<', False)
    """
    out = {}
    for ch in map(chr, _TOKENIZER_FOLD_CODES):
        category = unicodedata.category(ch)
        if category[0] in "LNM" or category == "Sc":
            continue
        nfkd = "".join(c for c in unicodedata.normalize("NFKD", ch) if not unicodedata.combining(c))
        if nfkd != _fold_char(ch):
            out[ch] = _fold_char(ch)
    return out


@functools.lru_cache(maxsize=None)
def _run_pattern(n: int) -> re.Pattern:
    return re.compile(rf"([{_SYMBOL_CLASS}])\1{{{n - 1},}}")


def normalise_newlines(text: str) -> str:
    """Step 1: CRLF and lone CR -> LF."""
    if "\r" not in text:
        return text
    return text.replace("\r\n", "\n").replace("\r", "\n")


def fold_ascii(text: str) -> tuple[str, int, int]:
    """Step 2: transliterate non-ASCII characters; returns (text, folded, dropped)."""
    if text.isascii():
        return text, 0, 0
    folded = dropped = 0

    def fold_span(m: re.Match) -> str:
        nonlocal folded, dropped
        out = [_fold_char(ch) for ch in m.group()]
        hits = sum(1 for s in out if s)
        folded += hits
        dropped += len(out) - hits
        return "".join(out)

    return _NON_ASCII.sub(fold_span, text), folded, dropped


def remove_controls(text: str) -> tuple[str, int]:
    """Step 3: tab/VT/FF -> space, other control codes dropped; returns (text, dropped)."""
    if "\t" in text or "\x0b" in text or "\x0c" in text:
        text = text.replace("\t", " ").replace("\x0b", " ").replace("\x0c", " ")
    return _CONTROL.subn("", text)


def remove_symbol_runs(text: str, min_run: int) -> tuple[str, int, int]:
    """Step 4: each run of ``min_run``+ identical symbols -> one space; (text, runs, chars)."""
    n = len(text)
    text, runs = _run_pattern(min_run).subn(" ", text)
    return text, runs, n - len(text) + runs


def normalise_spaces(text: str, final: bool = True) -> tuple[str, int]:
    """Step 5: collapse space runs, strip spaces at line ends; returns (text, removed).

    ``final=False`` keeps a space at the very end: the text may continue.
    """
    n = len(text)
    if "  " in text:
        text = _SPACE_RUN.sub(" ", text)
    if " \n" in text:
        text = text.replace(" \n", "\n")
    if final and text.endswith(" "):
        text = text[:-1]
    return text, n - len(text)


def strip_speaker_tags(text: str) -> tuple[str, int]:
    """Step 6: remove ``*?[A-Z]{1,3}: `` tags at line starts; returns (text, tags)."""
    tags = 0

    def drop(m: re.Match) -> str:
        nonlocal tags
        tags += m.group().count(": ")
        return ""

    return _TAGS.sub(drop, text), tags


def clean_text_stats(text: str, config: CleanConfig = CleanConfig()) -> tuple[str, CleanStats]:
    """Clean ``text`` in one go; returns the cleaned text and what changed."""
    st = CleanStats()
    text = normalise_newlines(text)
    text, st.folded, st.dropped = fold_ascii(text)
    text, dropped = remove_controls(text)
    st.dropped += dropped
    text, st.symbol_runs, st.symbol_chars = remove_symbol_runs(text, config.min_symbol_run)
    text, st.spaces = normalise_spaces(text)
    if config.strip_speaker_tags:
        text, st.speaker_tags = strip_speaker_tags(text)
    return text, st


def clean_text(text: str, config: CleanConfig = CleanConfig()) -> str:
    """Clean ``text`` to vocabulary symbols (pure, idempotent; see the module docstring)."""
    return clean_text_stats(text, config)[0]


class StreamCleaner:
    """Clean text that arrives in pieces, with the result of ``clean_text`` on the whole.

    Steps 1-3 act on single characters, so a piece can be cleaned alone, except
    that a piece ending in CR is held back one character (it may be half a CRLF).
    Steps 4-5 look at neighbours. After step 3 the text is cut at the last
    position ``r`` where a space or symbol run cannot straddle the cut: after a
    newline, before a letter or digit, or where ``buf[r-1] != buf[r]`` (the start
    of the final run of one character). The part before the cut is finished
    without stripping its trailing space, and that last space (if any) is carried
    into the rest, where it merges or is stripped exactly as in the whole text.
    So text with no whitespace at all (a 10 MB line of letters) is cut before its
    last character and still streams in bounded memory. The only text with no
    such cut is one long run of a single space or symbol; it is shortened on the
    spot (to one space, or to N copies of the symbol, which is still a run that
    goes), so at most N + 1 characters are carried from one piece to the next.
    Step 6 holds back at most the first five characters of a line, while they
    could still become a speaker tag.
    """

    def __init__(self, config: CleanConfig = CleanConfig()):
        self.config = config
        self.stats = CleanStats()
        self._cr = False  # the last piece ended in CR
        self._tail = ""  # steps 1-3 done; steps 4-5 wait for more text
        self._tag_head = ""  # start of a line that may still become a speaker tag
        self._line_start = True  # the text emitted so far ends at a line start

    def feed(self, text: str) -> str:
        """Clean the next piece; returns the output that is final so far."""
        return self._process(text, final=False)

    def finish(self) -> str:
        """End of text: returns the rest of the output."""
        return self._process("", final=True)

    def _process(self, text: str, final: bool) -> str:
        st = self.stats
        if self._cr:
            text = "\r" + text
            self._cr = False
        if not final and text.endswith("\r"):
            text, self._cr = text[:-1], True
        text = normalise_newlines(text)
        text, folded, dropped = fold_ascii(text)
        text, dropped2 = remove_controls(text)
        st.folded += folded
        st.dropped += dropped + dropped2

        buf = self._tail + text
        head, self._tail = (buf, "") if final else self._split(buf)
        head, runs, run_chars = remove_symbol_runs(head, self.config.min_symbol_run)
        head, spaces = normalise_spaces(head, final=final)
        st.symbol_runs += runs
        st.symbol_chars += run_chars
        st.spaces += spaces
        if not final and head.endswith(" "):
            head, self._tail = head[:-1], " " + self._tail
        if self.config.strip_speaker_tags:
            head = self._strip_tags(head, final)
        return head

    def _split(self, buf: str) -> tuple[str, str]:
        """Split ``buf`` into (ready, carried) at the last safe cut (see the class docstring)."""
        if len(buf) < 2:
            return "", buf
        last = buf[-1]
        if last == "\n":
            return buf, ""
        if last.isalnum():
            return buf[:-1], last
        start = len(buf.rstrip(last))
        # The final run of one space or symbol: shorten it without changing the output.
        run = len(buf) - start
        keep = 1 if last == " " else min(run, self.config.min_symbol_run)
        if last == " ":
            self.stats.spaces += run - keep
        else:
            self.stats.symbol_chars += run - keep
        return buf[:start], buf[start : start + keep]

    def _strip_tags(self, text: str, final: bool) -> str:
        text = self._tag_head + text
        self._tag_head = ""
        done = ""
        if not self._line_start:
            nl = text.find("\n")
            if nl < 0:
                return text
            done, text = text[: nl + 1], text[nl + 1 :]
        text, tags = strip_speaker_tags(text)
        self.stats.speaker_tags += tags
        last = text[text.rfind("\n") + 1 :]
        if not final and _PARTIAL_TAG.fullmatch(last):
            self._tag_head = last
            text = text[: len(text) - len(last)]
            self._line_start = True
        else:
            self._line_start = last == ""
        return done + text
