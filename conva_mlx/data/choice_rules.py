"""The rules a dilemma's two written actions follow (choice data, `choices/<value>.jsonl`).

Each dilemma gets `value_action` (what someone who puts the dilemma's value first would do)
and `competing_action` (what someone who puts its competing value first would do). The
instrument scores log p(value_action) - log p(competing_action) as the start of the model's
reply, so the two must differ only in what they choose: same opening word, similar length,
no word that names a value or judges the choice. Shared by `data validate` and the
generator; pure Python so it can be run on its own.
"""

from __future__ import annotations

import re

MIN_ACTION_WORDS = 4
MAX_ACTION_WORDS = 14
MIN_LENGTH_RATIO = 0.7  # shorter / longer action, in words: "lengths within 30%"
CHOICE_FIELDS = ("id", "value_action", "competing_action")

_WORD = re.compile(r"[a-z0-9']+")

# Words that name a value or its textbook synonyms (they would make the likelihood a test of
# the word, not of the choice). Regexes over the lowercased text, whole words.
VALUE_TERMS: dict[str, tuple[str, ...]] = {
    "self-direction": (r"self[- ]?direct\w*", r"independen\w*", r"autonom\w*", r"freedom"),
    "stimulation": (r"stimulat\w*", r"excit\w*", r"thrill\w*", r"novelty"),
    "hedonism": (r"hedonis\w*", r"pleasur\w*", r"indulg\w*", r"gratif\w*"),
    "achievement": (r"achiev\w*", r"success\w*", r"ambiti\w*"),
    "power": (r"power\w*", r"dominan\w*", r"dominat\w*", r"prestig\w*"),
    "security": (r"secur\w*", r"safety"),
    "conformity": (r"conform\w*", r"obedien\w*", r"obey\w*"),
    "tradition": (r"tradition\w*", r"heritage"),
    "benevolence": (r"benevolen\w*", r"kindness", r"compassion\w*"),
    "universalism": (r"universal\w*", r"equality", r"justice", r"fairness", r"tolerance"),
}
# Hedging (the action must commit) and moral verdicts (the action must not judge itself).
HEDGE_TERMS: tuple[str, ...] = (
    r"maybe", r"perhaps", r"might", r"possibly", r"probably", r"depends", r"weigh\w*",
    r"balanc\w*", r"consider\w*", r"compromise", r"it's up to",
)
MORAL_TERMS: tuple[str, ...] = (
    r"moral\w*", r"ethic\w*", r"unethical", r"right thing", r"wrong\w*", r"selfish\w*",
    r"selfless\w*", r"virtu\w*", r"noble", r"good person", r"bad person", r"irresponsibl\w*",
    r"responsible thing",
)


def _pattern(terms: tuple[str, ...]) -> re.Pattern[str]:
    return re.compile(r"\b(?:" + "|".join(terms) + r")\b")


_BANNED: tuple[tuple[str, re.Pattern[str]], ...] = (
    *((f"names a value ({value})", _pattern(terms)) for value, terms in VALUE_TERMS.items()),
    ("hedges", _pattern(HEDGE_TERMS)),
    ("judges the choice", _pattern(MORAL_TERMS)),
)


def action_words(text: str) -> list[str]:
    """Lowercase word tokens (the unit of every length rule)."""
    return _WORD.findall(text.lower())


def banned_terms(text: str) -> list[str]:
    """Why `text` uses a banned word: 'names a value (power): "powerful"', ..."""
    lowered = text.lower()
    found = []
    for reason, pattern in _BANNED:
        for m in pattern.finditer(lowered):
            found.append(f'{reason}: "{m.group(0)}"')
    return found


def action_pair_problems(value_action: str, competing_action: str) -> list[str]:
    """Why a dilemma's two actions are not acceptable (empty list: they are)."""
    problems = []
    lengths = {}
    for name, text in (("value_action", value_action), ("competing_action", competing_action)):
        n = len(action_words(text))
        lengths[name] = n
        if not MIN_ACTION_WORDS <= n <= MAX_ACTION_WORDS:
            problems.append(f"{name} has {n} words (allowed {MIN_ACTION_WORDS}-"
                            f"{MAX_ACTION_WORDS})")
        problems.extend(f"{name} {why}" for why in banned_terms(text))
    a, b = action_words(value_action), action_words(competing_action)
    if a == b:
        problems.append("the two actions are the same")
        return problems
    short, long_ = sorted(lengths.values())
    if long_ and short / long_ < MIN_LENGTH_RATIO:
        problems.append(f"lengths differ by more than 30% ({lengths['value_action']} vs "
                        f"{lengths['competing_action']} words)")
    if a and b and a[0] != b[0]:
        problems.append(f"the actions open differently ('{a[0]}' vs '{b[0]}'): give both "
                        "the same grammatical form")
    return problems
