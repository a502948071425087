"""Finding the answer an MLLM concluded with, and the sentences that state it.

Teachers write their final choice in many surface forms: "the answer is (B)", "Answer: B",
"**B**", a trailing "(B)", the option text after "So", an answer-first "B." and so on.
Refinement removes exactly those sentences, and eval reads generated answers with the same
rules, so both live here:

- :func:`extract_answer` ``(text, options) -> int | None``: the teacher's final choice.
- :func:`split_text` splits a text into lines and sentences with character offsets.
- :func:`find_conclusions` lists the sentences that state a choice, with the choice and the
  part of the sentence that is reasoning rather than conclusion (kept by refinement).

Mentions of options that are not conclusions ("Option A is unlikely because ...", "(C) would
need a second person") are not conclusions: a conclusion needs an answer cue ("answer is",
"I choose", "is the correct option"), a sentence that is nothing but a choice, a trailing
"(B)" on a concluding sentence, or the option text in a final "So / Therefore ..." sentence.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

LETTERS = "ABCDEFGHIJ"

# A list marker at the start of a line belongs to the line, not to its first sentence.
_MARKER = re.compile(r"^(\s*(?:#{1,6}\s+|>\s*)?(?:[-*+•]\s+|\d{1,2}[.)]\s+|(?i:step)\s*\d{1,2}\s*[:.)-]\s*)?)")
# A sentence ends at . ! ? followed by space and an upper-case start (after quotes/brackets/bold).
_BOUNDARY = re.compile(r"(?<=[.!?])[\"'”’)\]*_]*\s+(?=[\"'“‘(\[*_\\]*[A-Z0-9\\])")
_ABBREV = re.compile(r"(?i:\b(?:mr|mrs|ms|dr|st|vs|etc|e\.g|i\.e))\.$")

_ADVERB = r"(?:\s+(?:clearly|likely|probably|definitely|obviously|certainly|indeed|most\s+likely|therefore|thus|then))?"
_WORD_SUFFIX = (r"(?i:\s+(?:is|would\s+be|should\s+be|must\s+be|will\s+be|seems\s+to\s+be|appears\s+to\s+be|here\s+is)"
                + _ADVERB + ")")
# Cues after which the choice follows: "... answer is (B)", "Answer: B", "I choose B", "..., which
# already suggests (B)" (a mid-text statement of the choice: needs the letter in brackets or "option B").
_CUES_BEFORE = re.compile(
    r"(?i:\b(?:final|correct|right|best|true|most\s+(?:likely|plausible|appropriate|suitable|reasonable|accurate|fitting))"
    r"\s+(?:answer|option|choice|response)(?:\s+(?:to|for)\s+(?:the|this)\s+question)?" + _WORD_SUFFIX + r"?\s*[:=–—-]?"
    r"|\banswer(?:\s+(?:to|for)\s+(?:the|this)\s+question)?" + _WORD_SUFFIX + r"\s*:?"
    r"|\banswer\s*(?:[:=–—]|-(?=\s))"
    r"|\b(?:I|we)(?:\s+would|\s+will|'d|'ll|\s+therefore|\s+thus)?\s+(?:choose|pick|select|go\s+with|opt\s+for)"
    r"|\b(?:I|we)\s+(?:think|believe|guess|would\s+say|conclude)\s+(?:that\s+)?(?:it|this|the\s+answer)"
    r"\s+(?:is|would\s+be|must\s+be)" + _ADVERB +
    r"|<answer>\s*"
    r"|\b(?:corresponds?|corresponding|points?|matches|match)\s+(?:to\s+|with\s+)?(?=(?:the\s+)?(?:option|choice|answer)\b)"
    r"|\bwhich\s+is\s+(?=(?:option|choice)\b)"
    r"|(?<!\bnot\s)(?<!n't\s)(?<!never\s)\b(?:already\s+)?(?:suggests|indicates|implies)\s+(?:that\s+)?"
    r"(?=(?:the\s+)?(?:option|choice)\s+[A-J]\b|[\(\[][A-J][\)\]])"
    r"|\\boxed\{)"
)
# Cues before which the choice stands: "(B) is the correct answer", "'cut the cake' is correct".
_CUES_AFTER = re.compile(
    r"(?i:\s+(?:is|would\s+be|seems\s+to\s+be|appears\s+to\s+be|must\s+be)\s+(?:the\s+)?"
    r"(?:correct|right|best|most\s+(?:likely|plausible|appropriate|suitable|accurate|fitting))"
    r"(?:\s+(?:answer|option|choice|one))?\b"
    r"|\s+(?:is|would\s+be|must\s+be)" + _ADVERB + r"\s+(?:the|my|our)\s+(?:final\s+)?(?:answer|choice)\b"
    r"|\s+(?:fits|matches)\s+(?:the\s+(?:video|frames|question)\s+)?best\b"
    r"|\s+best\s+(?:describes|matches|fits|explains|answers)\b)"
)
_MARKERS = re.compile(
    r"^[\W_]*(?i:so|thus|therefore|hence|consequently|in\s+conclusion|conclusion|in\s+summary|to\s+sum\s+up|to\s+conclude|"
    r"overall|in\s+short|clearly|this\s+(?:means|suggests|indicates|shows|implies)|"
    r"it\s+(?:seems|appears)|based\s+on\s+(?:this|these|the\s+\w+))\b"
)
# A conclusion marker anywhere in a sentence ("It is therefore option A", "The dog (option A), thus, ...").
_ANY_MARKER = re.compile(r"(?i:\b(?:so|thus|hence|therefore|consequently|overall|in\s+conclusion|conclusion|"
                         r"final\s+answer|i\.e\.))(?![\w-])")
# A reference to an option by its letter: "(B)", "(option B)", "option B", or a lone capital at the end.
_LETTER_REF = re.compile(r"[\(\[](?i:(?:option|choice)\s+)?([A-J])[\)\]]|\b(?i:option|choice)\s+([A-J])\b"
                         r"|(?<![\w'’.])([A-J])(?=[\s*_]*(?:[.!][\s*_]*)?$)|(?<=[*:]\s)([A-J])(?=\s+[–—-]\s)")
_NEGATION = re.compile(r"(?i:\b(?:not|no|never|unlikely|rule[sd]?\s+out|ruling\s+out|eliminat\w*|incorrect|wrong|"
                       r"isn't|aren't|doesn't|don't|cannot|can't|rather\s+than|instead\s+of)\b)")
_LABEL_ONLY = re.compile(r"^[\s#>*_]*(?i:(?:the\s+)?(?:final\s+)?(?:answer|conclusion|choice|selected\s+option)s?)"
                         r"[\s*_]*:?[\s*_]*$")
_CLAUSE = re.compile(r"(?i:,\s*(?:and\s+)?(?:so|thus|therefore|hence|which(?:\s+means(?:\s+that)?)?)\s+"
                     r"|;\s*|\s+[–—-]\s+|,\s+)$")
_REASON = re.compile(r"^[\s,.:;*_)\]]*(?i:because|since|as|given\s+that)\s+(.*)$")
_STRIP = " \t*_`\"'“”‘’:;,.!?-–—"


@dataclass
class Sentence:
    """One sentence of a text: ``text[start:end]``; ``line`` is the index of its line."""

    start: int
    end: int
    line: int
    text: str


@dataclass
class Line:
    """One line of a text: ``marker`` (list marker / header prefix) then its sentences."""

    start: int
    end: int
    marker: str
    sentences: list[Sentence]


@dataclass
class Conclusion:
    """A sentence that states a choice.

    ``choice`` is the option index (None when the sentence is a bare answer label such as an
    "Answer:" heading); ``keep`` is reasoning inside the sentence that survives refinement
    (e.g. "The man picks up the knife" of "The man picks up the knife, so the answer is B.").
    """

    sentence: Sentence
    choice: int | None
    kind: str
    keep: str = ""


def normalize(s: str) -> str:
    """Lower-case, punctuation to spaces, single spaces: the form option texts are matched in."""
    return " ".join(re.sub(r"[^0-9a-z]+", " ", s.lower()).split())


def split_text(text: str) -> list[Line]:
    """Split ``text`` into lines, and each line (after its list marker) into sentences."""
    lines: list[Line] = []
    pos = 0
    for raw in text.splitlines(keepends=True):
        body_line = raw.rstrip("\r\n")
        marker = _MARKER.match(body_line).group(1)
        sentences: list[Sentence] = []
        start = len(marker)
        cuts = [m for m in _BOUNDARY.finditer(body_line, start) if not _ABBREV.search(body_line[start:m.start()])]
        for end, nxt in [(m.start(), m.end()) for m in cuts] + [(len(body_line), None)]:
            seg = body_line[start:end]
            if seg.strip():
                lead = len(seg) - len(seg.lstrip())
                a, b = pos + start + lead, pos + start + len(seg.rstrip())
                sentences.append(Sentence(a, b, len(lines), text[a:b]))
            if nxt is not None:
                start = nxt
        lines.append(Line(pos, pos + len(body_line), marker, sentences))
        pos += len(raw)
    return lines


def _option_at(rest: str, options: list[str]) -> int | None:
    """The option whose text ``rest`` starts with (longest wins)."""
    norm = normalize(rest)
    best, best_len = None, 0
    for i, opt in enumerate(options):
        o = normalize(opt)
        if o and (norm == o or norm.startswith(o + " ")) and len(o) > best_len:
            best, best_len = i, len(o)
    return best


def _option_in(s: str, options: list[str], last: bool = False) -> int | None:
    """The option whose text occurs in ``s`` as whole words: earliest start (or latest end), longest."""
    norm = f" {normalize(s)} "
    found = []
    for i, opt in enumerate(options):
        o = normalize(opt)
        if o:
            at = norm.rfind(f" {o} ") if last else norm.find(f" {o} ")
            if at >= 0:
                found.append((-(at + len(o)) if last else at, -len(o), i))
    return min(found)[2] if found else None


def _letter(c: str, options: list[str]) -> int | None:
    i = LETTERS.find(c.upper())
    return i if 0 <= i < len(options) else None


def parse_choice(rest: str, options: list[str]) -> int | None:
    """The choice that ``rest`` (the text right after an answer cue) starts with.

    A letter ("B", "(B)", "option b", "**B**") or an option's text (possibly quoted, possibly
    after "that"). "A man ..." is read as the option text when an option starts that way.
    """
    s = rest.lstrip(_STRIP + "([")
    s = re.sub(r"^(?i:that|to|the\s+(?:option|choice|letter|answer)|option|choice|letter)\s+", "", s).lstrip(_STRIP)
    m = re.match(r"([\(\[])?([A-Ja-j])([\)\]])?(?=$|[^A-Za-z0-9'’])", s)
    if m:
        bare = not (m.group(1) or m.group(3))
        lower_ok = (not bare or re.match(r"(?i:\W*(?:option|choice|letter))", rest.lstrip(_STRIP + "(["))
                    or re.fullmatch(r"[a-j][\s.!*_]*", s))  # "Answer: b": the letter alone
        if m.group(2).isupper() or lower_ok:
            text_choice = _option_at(s, options)
            if bare and text_choice is not None and re.match(r"[A-J]\s+[a-z]", s):
                return text_choice  # "A man in red ..." is option text, not option A
            if _letter(m.group(2), options) is not None:
                return _letter(m.group(2), options)
    s = re.split(r"(?i:\b(?:because|since|as|given)\b)", s)[0]
    return _option_in(s, options)


def _choice_before(head: str, options: list[str]) -> int | None:
    """The choice that ``head`` (the text right before "is the correct answer") ends with."""
    m = re.search(r"(?:^|[^A-Za-z0-9'’])[\(\[]?([A-J])[\)\]]?[\s*_\"'”’:]*$", head)
    if m and _letter(m.group(1), options) is not None:
        return _letter(m.group(1), options)
    tail = re.split(r"[.;,:!?]", head)[-1]
    return _option_in(tail, options, last=True)


def bare_choice(sentence: str, options: list[str]) -> int | None:
    """The option of a sentence that is nothing but a choice: "B", "(B).", "**B** red", "B) red"."""
    s = sentence.strip().strip("*_`\"'“”‘’ ")
    m = re.match(r"^(?i:(?:option|choice)\s+)?[\(\[]?([A-J])[*_]*(?:[\)\]]|\.|:|(?=\s|$))[\s*_]*(.*?)[\s*_.!]*$", s)
    if not m or _letter(m.group(1), options) is None:
        return None
    i = _letter(m.group(1), options)
    rest = m.group(2).strip().strip("*_`\"'“”‘’ ").rstrip(".")
    if rest and normalize(rest) != normalize(options[i]):
        return None
    return i


def _split_keep(sentence: str, cue_start: int, cue_end_rest: str) -> str:
    """Reasoning kept from a conclusion sentence: the clause before the cue and a "because" clause."""
    kept = []
    head = re.sub(r"(?i:\b(?:the|my|our)\s+)$", "", sentence[:cue_start])
    m = _CLAUSE.search(head)
    if m:
        before = head[:m.start()].strip()
        if len(before.split()) >= 3 and not _MARKERS.match(before):
            kept.append(before.rstrip(",;") + ".")
    r = _REASON.match(cue_end_rest)
    if r and len(r.group(1).split()) >= 3:
        reason = r.group(1).strip().rstrip(".!") + "."
        kept.append(reason[0].upper() + reason[1:])
    return " ".join(kept)


def _negated(sentence: str, options: list[str]) -> bool:
    """A negation in ``sentence`` outside the option texts ("never" can be an option)."""
    for opt in sorted((o.strip() for o in options), key=len, reverse=True):
        if opt:
            sentence = re.sub(r"(?i)(?<!\w)" + re.escape(opt) + r"(?!\w)", " ", sentence)
    return bool(_NEGATION.search(sentence))


def _explicit(s: Sentence, options: list[str]) -> Conclusion | None:
    for m in _CUES_BEFORE.finditer(s.text):
        choice = parse_choice(s.text[m.end():], options)
        if choice is not None:
            rest = s.text[m.end():].lstrip(_STRIP + "([")
            rest = re.sub(r"^(?i:option|choice|letter)\s+", "", rest)
            after = re.match(r"[\(\[]?[A-J][\)\]]?[\s*_]*", rest)
            tail = rest[after.end():] if after else rest
            o = normalize(options[choice])
            if o and normalize(tail).startswith(o):
                tail = tail[len(re.match(r"[\W_]*", tail).group(0)) + len(options[choice].strip()):]
            return Conclusion(s, choice, "explicit", _split_keep(s.text, m.start(), tail))
    for m in _CUES_AFTER.finditer(s.text):
        if _NEGATION.search(s.text[max(0, m.start() - 12):m.end()]):
            continue
        choice = _choice_before(s.text[:m.start()], options)
        if choice is not None:
            return Conclusion(s, choice, "explicit", _split_keep(s.text, 0, s.text[m.end():]))
    return None


def _marked(s: Sentence, options: list[str]) -> Conclusion | None:
    """A sentence with a conclusion marker anywhere and exactly one option named by its letter.

    Covers "So he is slicing the dessert (option B).", "Conclusion: E.", "It is therefore option A
    that moves first.", "Hence (option C), she ...". Two different letters (options compared) or
    a negation ("so option D does not fit") are reasoning, not a conclusion.
    """
    marker = _ANY_MARKER.search(s.text)
    if marker is None or s.text.rstrip().endswith("?") or _negated(s.text, options):
        return None
    refs = {_letter(next(g for g in m.groups() if g), options) for m in _LETTER_REF.finditer(s.text)}
    if len(refs) != 1 or None in refs:
        return None
    keep = _split_keep(s.text, marker.start(), "")
    return Conclusion(s, refs.pop(), "marked", "" if _LETTER_REF.search(keep) else keep)


def find_conclusions(text: str, options: list[str], lines: list[Line] | None = None,
                     anywhere: bool = False) -> list[Conclusion]:
    """The sentences of ``text`` that state a choice among ``options``, in text order.

    Args:
        text: the teacher's output.
        options: the answer options (letters A, B, ... by position).
        lines: ``split_text(text)`` when already computed.
        anywhere: apply the final-sentence rules (trailing "(B)", option text after "So") to
            every sentence; used by the leakage audit on refined texts.
    """
    lines = split_text(text) if lines is None else lines
    sentences = [s for ln in lines for s in ln.sentences]
    bare = {i: bare_choice(s.text, options) for i, s in enumerate(sentences)}
    # Several different bare choices form an option list ("A) ...\nB) ..."), unless in bold.
    listing = len({c for c in bare.values() if c is not None}) >= 2
    out: list[Conclusion] = []
    for i, s in enumerate(sentences):
        last = anywhere or i == len(sentences) - 1
        found = _explicit(s, options)
        if found is None and bare[i] is not None and (not listing or s.text.strip().startswith("**")):
            found = Conclusion(s, bare[i], "bare")
        if found is None:
            found = _marked(s, options)
        if found is None and _LABEL_ONLY.match(s.text):
            found = Conclusion(s, None, "label")
        if found is None and not _negated(s.text, options):
            trail = re.search(r"[\(\[]([A-J])[\)\]][\s*_.!]*$", s.text)
            if trail and (last or _MARKERS.match(s.text)) and _letter(trail.group(1), options) is not None:
                head = s.text[:trail.start()]
                keep = "" if _MARKERS.match(head) or _option_in(head, options) is not None else head.strip() + "."
                found = Conclusion(s, _letter(trail.group(1), options), "trailing", keep)
            elif _MARKERS.match(s.text):
                after = _MARKERS.sub("", s.text)
                choice = bare_choice(after.lstrip(" ,:;"), options)  # "Thus, B."
                if choice is not None:
                    found = Conclusion(s, choice, "bare")
                elif last and (choice := _option_in(after, options, last=True)) is not None:
                    found = Conclusion(s, choice, "text")
        if found is not None:
            out.append(found)
    return out


_RANK = {"explicit": 3, "bare": 2, "marked": 2, "trailing": 1, "text": 0}


def extract_answer(text: str, options: list[str]) -> int | None:
    """The option index a model's output concludes with, or None when it states no choice.

    Works on long reasoning chains (the last explicit statement wins; an answer given first is
    found too) and on short generated answers ("B", "(B) red", "Answer: B", "red").

    Args:
        text: the generated text.
        options: the answer options; letters are A, B, ... by position.
    """
    if not text or not text.strip():
        return None
    whole = normalize(text)
    exact = [i for i, o in enumerate(options) if normalize(o) == whole]
    if len(exact) == 1:
        return exact[0]
    found = [c for c in find_conclusions(text, options) if c.choice is not None]
    if not found:
        return None
    best = max(_RANK[c.kind] for c in found)
    return [c for c in found if _RANK[c.kind] == best][-1].choice
