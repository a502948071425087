"""Each benchmark's official question-type grouping for accuracy reports.

- NExT-QA (and the synthetic set, which uses NExT-QA's type codes): the official evaluation merges
  TP (before) into TN (after) and reports Why (CW), How (CH), Bef&Aft (TN+TP), When (TC),
  Cnt (DC), Loc (DL), Other (DO), then C = Why+How, T = Bef&Aft+When, D = Cnt+Loc+Other, each
  pooled over questions, and the overall accuracy over all questions.
- IntentQA: CW, CH and TP&TN (TN+TP), then the total.
- STAR: Interaction, Sequence, Prediction, Feasibility; overall = the unweighted mean of the four
  type accuracies, as STAR's leaderboard ("Mean") and the papers ("Avg") report it; the accuracy
  pooled over all questions is reported beside it as ``overall_pooled``.
- EgoSchema: no types; only the questions with a public answer are scored.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Grouping:
    """How one dataset's question types are pooled into reported groups."""

    type_to_group: dict[str, str]
    """qtype code -> reported group name; the group order of the report follows first appearance."""
    super_groups: dict[str, tuple[str, ...]] = field(default_factory=dict)
    """Reported unions of groups (NExT-QA C/T/D), pooled over questions."""
    overall_is_mean_over_types: bool = False
    """Overall = the unweighted mean of the group accuracies (STAR's leaderboard "Mean"); the
    accuracy pooled over questions then goes to ``overall_pooled``."""

    @property
    def groups(self) -> list[str]:
        return list(dict.fromkeys(self.type_to_group.values()))


_NEXTQA = Grouping(
    type_to_group={"CW": "Why", "CH": "How", "TN": "Bef&Aft", "TP": "Bef&Aft", "TC": "When",
                   "DC": "Cnt", "DL": "Loc", "DO": "Other"},
    super_groups={"C": ("Why", "How"), "T": ("Bef&Aft", "When"), "D": ("Cnt", "Loc", "Other")},
)
_STAR_TYPES = ("Interaction", "Sequence", "Prediction", "Feasibility")

GROUPINGS: dict[str, Grouping] = {
    "nextqa": _NEXTQA,
    "synthetic": _NEXTQA,
    "intentqa": Grouping(type_to_group={"CW": "CW", "CH": "CH", "TN": "TP&TN", "TP": "TP&TN"}),
    "star": Grouping(type_to_group={t: t for t in _STAR_TYPES}, overall_is_mean_over_types=True),
    "egoschema": Grouping(type_to_group={"EgoSchema": "EgoSchema"}),
}


def grouping_for(dataset: str) -> Grouping:
    """The official grouping of ``dataset``; a clear error for an unknown name."""
    if dataset not in GROUPINGS:
        raise ValueError(f"no scoring rules for dataset {dataset!r}; known: {', '.join(GROUPINGS)}")
    return GROUPINGS[dataset]
