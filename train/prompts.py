"""Every training and evaluation prompt text, in one place, with a version string.

A training sequence is built from SEGMENTS that are tokenized one by one and concatenated,
so that the frame placeholders, the prompt and the target are exact token spans (no
re-tokenization across a boundary can move a label)::

    <bos> "USER:" "\\nFrame 1:" [placeholders] "\\nTransition: {caption 1->2}" "\\nFrame 2:" ...
    "\\nQuestion: {question}" "\\nOptions:\\n(A) ...\\n(B) ..." "\\n{instruction}\\nASSISTANT:"
    " {target}" <eos>                                   <- the target span (labels), the rest is prompt

Frames are numbered ("Frame 1:") so that interleaved transitional captions (vCoT) read as
text between two frames: ``captions[j]`` describes the gap between sampled frame j and j+1.

Changing any text here changes what a trained model expects: bump ``PROMPT_VERSION``.
"""

from __future__ import annotations

PROMPT_VERSION = "train-prompts-v1"

OPTION_LETTERS = "ABCDEFGHIJ"

USER_PREFIX = "USER:"
FRAME_PREFIX = "\nFrame {index}:"
CAPTION_TEMPLATE = "\nTransition: {caption}"
QUESTION_TEMPLATE = "\nQuestion: {question}"
OPTIONS_HEADER = "\nOptions:"
OPTION_TEMPLATE = "\n({letter}) {option}"
ASSISTANT_PREFIX = "\n{instruction}\nASSISTANT:"
# The target segment starts with a space so that it reads "ASSISTANT: (B)".
TARGET_TEMPLATE = " {target}"

INSTRUCTIONS = {
    "qa_letter": "Answer with the option's letter from the given choices directly.",
    "qa_letter_text": "Answer with the option's letter and text from the given choices.",
    "reasoning": "Describe step by step what the video shows that helps answer the question.",
    "stl": "Reason step by step about the video, then give the answer.",
}

# Stage-1 alignment (task.mode caption): frames -> caption. Kept out of INSTRUCTIONS so that the
# texts a tokenizer is trained on (fixed_texts) stay those of the QA prompts.
CAPTION_INSTRUCTION = "Describe the video briefly."

# The reasoning text and the answer are joined like this in the single-task (STL) target.
STL_TARGET_TEMPLATE = "{reasoning}\nAnswer: {answer}"


def option_letter(index: int) -> str:
    """Letter of option ``index`` (0 -> "A")."""
    if not 0 <= index < len(OPTION_LETTERS):
        raise ValueError(f"option index {index} outside 0..{len(OPTION_LETTERS) - 1}")
    return OPTION_LETTERS[index]


def answer_text(index: int, options: list[str], answer_format: str) -> str:
    """The QA target for option ``index``: "(B)" (letter) or "(B) red" (letter_text)."""
    if not 0 <= index < len(options):
        raise ValueError(f"answer index {index} outside the {len(options)} options")
    letter = option_letter(index)
    if answer_format == "letter":
        return f"({letter})"
    if answer_format == "letter_text":
        return f"({letter}) {options[index].strip()}"
    raise ValueError(f"answer_format must be 'letter' or 'letter_text', got {answer_format!r}")


def qa_instruction(answer_format: str) -> str:
    """The QA task instruction for an answer format ("letter" | "letter_text")."""
    key = f"qa_{answer_format}"
    if key not in INSTRUCTIONS:
        raise ValueError(f"answer_format must be 'letter' or 'letter_text', got {answer_format!r}")
    return INSTRUCTIONS[key]


def question_text(question: str) -> str:
    """The question line of the prompt."""
    return QUESTION_TEMPLATE.format(question=str(question).strip())


def options_text(options: list[str]) -> str:
    """The lettered options of the prompt."""
    text = OPTIONS_HEADER
    for i, opt in enumerate(options):
        text += OPTION_TEMPLATE.format(letter=option_letter(i), option=str(opt).strip())
    return text


def fixed_texts() -> list[str]:
    """All constant prompt texts, for training a tokenizer that knows them."""
    texts = [USER_PREFIX, ASSISTANT_PREFIX.format(instruction=""), QUESTION_TEMPLATE.format(question=""),
             OPTIONS_HEADER]
    texts += [FRAME_PREFIX.format(index=i) for i in range(1, 65)]
    texts += [OPTION_TEMPLATE.format(letter=ch, option="") for ch in OPTION_LETTERS]
    texts += [f"({ch})" for ch in OPTION_LETTERS]
    texts += list(INSTRUCTIONS.values()) + [CAPTION_TEMPLATE.format(caption=""), "\nAnswer:"]
    return texts
