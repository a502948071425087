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


# An option label opening a sentence: "(C)", "[C]", "C)", "C.", "C:", "**C**", "Option C:", "option (C)";
# "Option C" without punctuation only when nothing but the option follows (see :func:`option_line`).
_OPTION_LABEL = re.compile(
    r"^[\s*_`]*(?:(?i:option|choice)\s+)?(?:[\(\[]([A-J])[\)\]]|([A-J])(?:[\)\]:]|\.(?![\w.])|(?=\*\*)))"
    r"|^[\s*_`]*(?i:option|choice)\s+([A-J])(?![\w'’])")
# What follows a label when the sentence discusses the option rather than states it: "(C) would need ...".
_DISCUSS = re.compile(
    r"(?i:(?:is|are|was|were|would|could|should|can|cannot|can't|does|doesn't|do|don't|did|didn't|seems?|appears?|"
    r"fits?|matches|match|mentions?|describes?|shows?|needs?|requires?|has|had|have|will|might|may|must|and|or|vs|"
    r"versus|because|since|as|also|isn't|aren't|wasn't|not|only|if|though|but|nor|says?|refers?|means?)\b)")
OPTIONS_HEADER = re.compile(r"^[\s#>*_]*(?i:(?:the\s+)?(?:answer\s+)?(?:options?|choices?)(?:\s+are)?)"
                            r"[\s*_]*:?[\s*_]*$")
"""An "Options:" header line (above an echoed option list)."""


@dataclass
class OptionLine:
    """A sentence that is an option as a question lists it: "(C) 3", "C) in the top left", "**B.** ...".

    ``letter`` is the label's letter, ``choice`` its option index (None beyond the options),
    ``named`` the options the sentence names (the letter's and the one its text starts with, which
    differ when a model writes "(C) 3" for option "(B) 3"), ``keep`` an observation that follows the
    option ("(C) The circle turns red." keeps "The circle turns red.").
    """

    sentence: Sentence
    letter: str
    choice: int | None
    rest: str
    named: frozenset
    keep: str = ""


def option_line(s: Sentence, options: list[str]) -> OptionLine | None:
    """``s`` as an option line, or None when it does not open with an option label or discusses the option.

    "(C) 3", "C) in the top left", "C.", "**C** yellow", "Option C: blue" are option lines; "(C) would
    need a second person", "Option B mentions a cake" and negated sentences ("A) no ball is thrown")
    are not.
    """
    m = _OPTION_LABEL.match(s.text)
    if not m:
        return None
    letter = next(g for g in m.groups() if g)
    choice = _letter(letter, options)
    if choice is None and not re.match(r"[\s*_`]*[\(\[]", s.text):
        return None  # "I." or "J:" beyond the options: only a bracketed letter is surely an option label
    rest = s.text[m.end():].strip(" \t*_`\"'“”‘’")
    rest_opt = _option_at(rest, options)
    if m.group(3) and rest and rest_opt is None and normalize(rest) not in {normalize(o) for o in options}:
        return None  # "Option B mentions a cake": only "Option B" alone or "Option B (cut the cake)"
    if rest and (_DISCUSS.match(rest) or rest.rstrip().endswith("?") or _negated(s.text, options)):
        return None
    named = {i for i in (choice, rest_opt) if i is not None}
    keep = ""
    if rest_opt is not None:  # "B) cut the cake: he holds a knife." -> "He holds a knife."
        o = options[rest_opt].strip()
        at = re.search(r"(?i)" + r"\W+".join(re.escape(w) for w in o.split()), rest)
        tail = re.match(r"\s*[:;,–—-]\s*(.*)$", rest[at.end():]) if at else None
        if tail and len(tail.group(1).split()) >= 3:
            keep = tail.group(1)
    elif re.match(r"[A-Z]", rest) and len(rest.split()) >= 4 and re.search(r"[.!]$", rest):
        keep = rest  # "(C) The circle turns red in the last shot."
    if keep:
        keep = keep.strip().rstrip(".!") + "."
        keep = keep[0].upper() + keep[1:]
    return OptionLine(s, letter, choice, rest, frozenset(named), keep)


def option_lines(sentences: list[Sentence], options: list[str]) -> tuple[dict[int, OptionLine], bool, bool]:
    """The option lines among ``sentences`` (by ``id``), whether they form a list (two or more letters),
    and whether that list is the complete option list, in order, each with its own text."""
    found = {id(s): ol for s in sentences if (ol := option_line(s, options)) is not None}
    listing = len({ol.letter for ol in found.values()}) >= 2
    ols = list(found.values())
    complete = (listing and len(ols) == len(options)
                and all(ol.choice == i and normalize(ol.rest) == normalize(options[i]) for i, ol in enumerate(ols)))
    return found, listing, complete


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
    # Option lines with two or more letters are an option list ("A) ...\nB) ...", a model echoing the
    # question's options): no line of it is a choice, unless one is in bold ("**B. cut the cake**").
    olines, listing, _ = option_lines(sentences, options)
    listing = listing or len({c for c in bare.values() if c is not None}) >= 2
    # An option's text alone on a line ("in the top left") answers; several such lines are a list.
    alone = {id(s): i for s in sentences
             if len(lines[s.line].sentences) == 1 and (i := _option_alone(s.text, options)) is not None}
    alone_list = len(set(alone.values())) >= 2
    out: list[Conclusion] = []
    for i, s in enumerate(sentences):
        last = anywhere or i == len(sentences) - 1
        listed = listing and (id(s) in olines or bare[i] is not None)
        if listed and not (bare[i] is not None and s.text.strip().startswith("**")):
            continue  # a line of an echoed option list states no choice
        found = _explicit(s, options)
        if found is None and bare[i] is not None:
            found = Conclusion(s, bare[i], "bare")
        if found is None:
            found = _marked(s, options)
        if found is None and (_LABEL_ONLY.match(s.text) or _empty_cue(s.text)):
            found = Conclusion(s, None, "label")
        if found is None and not _negated(s.text, options):
            trail = re.search(r"[\(\[]([A-J])[\)\]][\s*_.!]*$", s.text)
            if trail and (last or _MARKERS.match(s.text)) and _letter(trail.group(1), options) is not None:
                head = s.text[:trail.start()]
                keep = ("" if not head.strip(_STRIP) or _MARKERS.match(head) or _option_in(head, options) is not None
                        else head.strip() + ".")
                found = Conclusion(s, _letter(trail.group(1), options), "trailing", keep)
            elif _MARKERS.match(s.text):
                after = _MARKERS.sub("", s.text)
                choice = bare_choice(after.lstrip(" ,:;"), options)  # "Thus, B."
                if choice is not None:
                    found = Conclusion(s, choice, "bare")
                elif last and (choice := _option_in(after, options, last=True)) is not None:
                    found = Conclusion(s, choice, "text")
        if found is None and last and id(s) in alone and not alone_list:
            found = Conclusion(s, alone[id(s)], "text")
        if found is not None:
            out.append(found)
    return out


def _option_alone(sentence: str, options: list[str]) -> int | None:
    """The option whose full text is all of ``sentence`` ("Blue.", "in the top left"), longest first."""
    norm = normalize(sentence)
    hits = [i for i, o in enumerate(options) if norm and normalize(o) == norm]
    return hits[0] if hits else None


def _empty_cue(sentence: str) -> bool:
    """An answer cue with nothing after it: "The answer is", "So the final answer is:" (a cut-off reply)."""
    if sentence.rstrip().endswith("?"):
        return False
    ends = [m.end() for m in _CUES_BEFORE.finditer(sentence)]
    return bool(ends) and not sentence[ends[-1]:].strip(_STRIP + "()[]{}")


# Letter forms that name an option wherever they stand: "**C**", "the answer C", "\\boxed{C}".
_LETTER_FORM = re.compile(r"\*\*\s*[\(\[]?([A-J])[\)\]]?[.):]?\s*\*\*"
                          r"|\b(?i:answer)\s*(?:[:=–—-]\s*)?[\(\[]?([A-J])[\)\]]?(?![\w'’])"
                          r"|\\boxed\{\s*[\(\[]?([A-J])[\)\]]?\s*\}")


@dataclass
class Mention:
    """A sentence that gives an answer away: what the leak audit flags and refinement removes.

    ``named``: the options it names (empty for a bare "Answer:" label); ``kind``: a conclusion kind
    (see :class:`Conclusion`), ``option-line`` (a lone option line such as "(C) 3"),
    ``option-list`` (a line of an echoed option list), ``standalone`` (an option's text alone as a
    sentence: "Blue.", "in the top left") or ``letter`` ("**C**", "answer C" inside a sentence);
    ``keep``: reasoning inside the sentence that refinement keeps.
    """

    sentence: Sentence
    named: frozenset
    kind: str
    keep: str = ""


def answer_mentions(text: str, options: list[str], lines: list[Line] | None = None) -> list[Mention]:
    """Every sentence of ``text`` that states or names an option the way an answer does, in text order.

    That is: a conclusion by the rules of :func:`find_conclusions` applied to every sentence
    (``anywhere``); a sentence that opens with an option label ("(C) 3", "C) in the top left",
    "C.", "**C** yellow", "Option C: blue"), alone or in an echoed option list; an option's full
    text standing alone as a sentence or line ("Blue.", "in the top left"); a letter in an answer
    form inside a sentence ("**C**", "the answer C", "\\boxed{C}"). Not mentions: observations that
    merely contain an option's words ("In the fourth shot, the circle is yellow in the top left."),
    discussion of an option ("Option B mentions a cake", "(C) would need a second person") and the
    complete option list in order, each option with its own text, which names every option alike.
    """
    lines = split_text(text) if lines is None else lines
    sentences = [s for ln in lines for s in ln.sentences]
    conclusions = {id(c.sentence): c for c in find_conclusions(text, options, lines, anywhere=True)}
    olines, listing, complete = option_lines(sentences, options)
    norm_opts = [normalize(o) for o in options]
    out: list[Mention] = []
    for s in sentences:
        c, ol = conclusions.get(id(s)), olines.get(id(s))
        if ol is not None and complete and c is None:
            continue
        if ol is not None:
            named = set(ol.named) | ({c.choice} if c is not None and c.choice is not None else set())
            out.append(Mention(s, frozenset(named), "option-list" if listing else "option-line", ol.keep))
        elif c is not None:
            out.append(Mention(s, frozenset({c.choice} if c.choice is not None else ()), c.kind, c.keep))
        elif (norm := normalize(s.text)) and norm in norm_opts:
            out.append(Mention(s, frozenset(i for i, o in enumerate(norm_opts) if o == norm), "standalone"))
        elif not _negated(s.text, options) and not s.text.rstrip().endswith("?"):
            named = {_letter(next(g for g in m.groups() if g), options) for m in _LETTER_FORM.finditer(s.text)
                     if not (m.group(2) and _option_at(s.text[m.start(2):], options) is not None
                             and re.match(r"[A-J]\s+[a-z]", s.text[m.start(2):]))}  # "answer A man in red"
            if named - {None}:
                out.append(Mention(s, frozenset(named - {None}), "letter"))
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
