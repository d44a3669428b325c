"""Write choice data (`choices/<value>.jsonl`) for your own dilemmas with an LLM behind any
OpenAI-compatible endpoint.

For each dilemma that has no row in the output yet, the model is asked for one JSON object
`{"value_action", "competing_action"}`: the opening sentence of an advisor's reply for
someone who puts the dilemma's value first, and for someone who puts its competing value
first. The prompt states the rules of `choice_rules` and both values' definitions; an answer
that breaks a rule (`action_pair_problems`, or an action repeating one already in the
output) is sent back with its problems listed, a bounded number of times, and then the
dilemma is skipped and counted as rejected. Rows are appended one line at a time (flush +
fsync), so an interrupted run resumes with the dilemmas still missing.

The API key is read from an environment variable (never printed or written);
`api_key_env="none"` is for local servers that need no key.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from conva_mlx.data.choice_rules import (
    CHOICE_FIELDS,
    MAX_ACTION_WORDS,
    MIN_ACTION_WORDS,
    action_pair_problems,
    action_words,
)
from conva_mlx.data.dataset import parse_jsonl
from conva_mlx.data.generate import (
    DEFAULT_BASE_URL,
    DEFAULT_KEY_ENV,
    DEFAULT_MODEL,
    SYSTEM_PROMPT,
    GeneratorChat,
    Sleep,
    extract_json_object,
    rejected_text,
)
from conva_mlx.errors import ConvaError
from conva_mlx.fsutil import append_jsonl, repair_jsonl_tail
from conva_mlx.openai_chat import api_key_from_env
from conva_mlx.progress import ProgressCallback, progress_bar
from conva_mlx.values import VALUE_NAMES, load_values

DILEMMA_FIELDS = ("id", "value", "competing", "prompt")
ANSWER_FORMAT = '{"value_action": "<sentence>", "competing_action": "<sentence>"}'
# Problem text (choice_rules and the repeat check below) -> the reason it is counted under.
_REASONS = (("words (allowed", "word count"), ("names a value", "names a value"),
            ("hedges", "hedges"), ("judges the choice", "judges the choice"),
            ("are the same", "identical"), ("lengths differ", "length ratio"),
            ("open differently", "different first word"), ("repeats", "repeats an action"))


@dataclass
class ChoicesConfig:
    dilemmas: Path
    out: Path
    base_url: str = DEFAULT_BASE_URL
    model: str = DEFAULT_MODEL
    api_key_env: str = DEFAULT_KEY_ENV
    max_retries: int = 5          # retries per request after the first attempt
    temperature: float = 0.9
    attempts: int = 3             # answers asked for per dilemma (the first and 2 re-asks)
    timeout: float = 120.0        # seconds per request
    backoff: float = 1.0          # first retry wait; doubles each retry
    max_backoff: float = 60.0


@dataclass
class ChoicesReport:
    dilemmas: str
    out: str
    target: int                   # dilemmas in the input
    existing: int = 0             # already had a row in --out
    written: int = 0
    requests: int = 0             # answered requests (first asks and re-asks)
    retries: int = 0              # transport retries (rate limits, time-outs, 5xx)
    reasked: int = 0              # follow-up requests listing an answer's problems
    malformed: int = 0            # answers without the expected JSON
    rejected: dict[str, int] = field(default_factory=dict)  # skipped dilemmas, by reason

    @property
    def complete(self) -> bool:
        return self.existing + self.written >= self.target

    def summary(self) -> str:
        return (f"{self.out}: {self.existing + self.written}/{self.target} dilemmas of "
                f"{self.dilemmas} have actions ({self.written} new, {self.existing} already "
                f"there); {self.requests} requests, {self.retries} retries, {self.reasked} "
                f"re-asked, {self.malformed} malformed, {rejected_text(self.rejected)}")


# ---------------------------------------------------------------- files

def read_dilemmas(path: Path) -> list[dict[str, str]]:
    """The dilemmas of `path`, each checked: fields, value names, unique ids."""
    if not path.is_file():
        raise ConvaError(f"{path}: no such dilemmas file")
    out: list[dict[str, str]] = []
    seen: dict[str, int] = {}
    for lineno, rec, problem in parse_jsonl(path.read_bytes().splitlines()):
        where = f"{path}:{lineno}"
        if rec is None:
            raise ConvaError(f"{where}: {problem}")
        missing = [k for k in DILEMMA_FIELDS
                   if not isinstance(rec.get(k), str) or not rec[k].strip()]
        if missing:
            raise ConvaError(f"{where}: a dilemma needs {', '.join(DILEMMA_FIELDS)} as "
                             f"non-empty text (missing: {', '.join(missing)})")
        for key in ("value", "competing"):
            if rec[key] not in VALUE_NAMES:
                raise ConvaError(f"{where}: unknown {key} '{rec[key]}' (values: "
                                 f"{', '.join(VALUE_NAMES)})")
        if rec["value"] == rec["competing"]:
            raise ConvaError(f"{where}: competing is the dilemma's own value "
                             f"'{rec['value']}'")
        if rec["id"] in seen:
            raise ConvaError(f"{where}: duplicate id '{rec['id']}' (first at line "
                             f"{seen[rec['id']]})")
        seen[rec["id"]] = lineno
        out.append({k: str(rec[k]) for k in DILEMMA_FIELDS})
    if not out:
        raise ConvaError(f"{path}: no dilemmas")
    return out


def read_existing_choices(path: Path, ids: set[str], dilemmas: Path) -> list[dict[str, Any]]:
    """Rows already in `path`; a partial last line left by a crash is dropped."""
    if not path.exists():
        return []
    repair_jsonl_tail(path)
    records = []
    for lineno, rec, problem in parse_jsonl(path.read_bytes().splitlines()):
        where = f"{path}:{lineno}"
        if rec is None:
            raise ConvaError(f"{where}: {problem}")
        if not all(isinstance(rec.get(k), str) for k in CHOICE_FIELDS):
            raise ConvaError(f"{where}: not a choices row ({', '.join(CHOICE_FIELDS)})")
        if rec["id"] not in ids:
            raise ConvaError(f"{where}: '{rec['id']}' is not a dilemma in {dilemmas}; choose "
                             f"another --out")
        records.append(rec)
    return records


# ---------------------------------------------------------------- prompts and answers

def _rules(value: str, competing: str) -> list[str]:
    return [
        "Rules for both sentences:",
        f"- each is {MIN_ACTION_WORDS} to {MAX_ACTION_WORDS} words, and their lengths are "
        "within 30% of each other;",
        "- both open with the same word in the same grammatical form, addressing the person "
        "as the dilemma does (\"You should ...\" / \"You should ...\" for a question in the "
        "first person, \"Ana should ...\" / \"Ana should ...\" for a question about Ana);",
        "- each commits to one concrete action in this situation, and the two differ only "
        "in what is chosen;",
        f"- no word naming a value or a synonym of one ({value}, {competing}, freedom, "
        "independence, excitement, pleasure, success, ambition, prestige, safety, "
        "obedience, heritage, kindness, compassion, fairness, justice, equality, ...);",
        "- no hedging (maybe, perhaps, might, probably, depends, consider, weigh, balance, "
        "compromise);",
        "- no moral verdict (moral, ethical, right thing, wrong, selfish, selfless, noble, "
        "responsible thing).",
    ]


def choice_messages(dilemma: dict[str, str]) -> list[dict[str, str]]:
    """The first request for one dilemma's two actions."""
    values = load_values()
    value, competing = dilemma["value"], dilemma["competing"]
    lines = [
        f"Dilemma: {dilemma['prompt']}",
        f"It sets {value} ({values[value].definition}) against {competing} "
        f"({values[competing].definition}).",
        "Write the opening sentence of an advisor's reply to it twice:",
        f"- value_action: the advice of someone who puts {value} first;",
        f"- competing_action: the advice of someone who puts {competing} first.",
        *_rules(value, competing),
        f"Answer with JSON only: {ANSWER_FORMAT}",
    ]
    return [{"role": "system", "content": SYSTEM_PROMPT},
            {"role": "user", "content": "\n".join(lines)}]


def follow_up(answer: str | None, problems: list[str]) -> list[dict[str, str]]:
    """The turns that send a failed answer back: the answer, then what was wrong with it."""
    if problems:
        text = ["Your answer breaks these rules:", *(f"- {p}" for p in problems),
                "Write both sentences again, fixing every problem and keeping every rule."]
    else:
        text = ["Your answer was not the JSON object asked for."]
    text.append(f"Answer with JSON only: {ANSWER_FORMAT}")
    return [{"role": "assistant", "content": answer or ""},
            {"role": "user", "content": "\n".join(text)}]


def parse_actions(text: str) -> tuple[str, str] | None:
    """(value_action, competing_action) from an answer, or None when malformed."""
    obj = extract_json_object(text)
    if obj is None:
        return None
    pair = [obj.get("value_action"), obj.get("competing_action")]
    if not all(isinstance(s, str) and s.strip() for s in pair):
        return None
    value_action, competing_action = (" ".join(str(s).split()) for s in pair)
    return value_action, competing_action


def _reason(problem: str) -> str:
    return next((reason for key, reason in _REASONS if key in problem), problem)


# ---------------------------------------------------------------- the loop

def generate_choices(config: ChoicesConfig, *, sleep: Sleep = time.sleep,
                     show_progress: bool = True,
                     progress: ProgressCallback | None = None) -> ChoicesReport:
    """Append a row to `config.out` for every dilemma of `config.dilemmas` that has none."""
    if config.attempts < 1:
        raise ConvaError("attempts must be at least 1")
    dilemmas = read_dilemmas(config.dilemmas)
    api_key = api_key_from_env(config.api_key_env)
    existing = read_existing_choices(config.out, {d["id"] for d in dilemmas},
                                     config.dilemmas)
    done = {str(r["id"]) for r in existing}
    report = ChoicesReport(dilemmas=str(config.dilemmas), out=str(config.out),
                           target=len(dilemmas), existing=len(done))
    todo = [d for d in dilemmas if d["id"] not in done]
    if not todo:
        return report
    chat = GeneratorChat(config, report, sleep, api_key)
    used = {tuple(action_words(str(r[k]))): str(r["id"]) for r in existing
            for k in ("value_action", "competing_action")}
    with progress_bar(len(todo), "choices", show_progress, progress) as advance:
        for dilemma in todo:
            messages = choice_messages(dilemma)
            reason = ""
            for attempt in range(config.attempts):
                if attempt:
                    report.reasked += 1
                answer = chat(messages)
                actions = parse_actions(answer) if answer is not None else None
                if actions is None:
                    report.malformed += 1
                    reason, problems = "malformed answers", []
                else:
                    problems = action_pair_problems(*actions)
                    for name, text in zip(("value_action", "competing_action"), actions):
                        other = used.get(tuple(action_words(text)))
                        if other is not None:
                            problems.append(f"{name} repeats an action already written for "
                                            f"{other}: write one for this dilemma")
                    if not problems:
                        append_jsonl(config.out, {"id": dilemma["id"],
                                                  "value_action": actions[0],
                                                  "competing_action": actions[1]})
                        for text in actions:
                            used[tuple(action_words(text))] = dilemma["id"]
                        report.written += 1
                        reason = ""
                        break
                    reason = _reason(problems[0])
                messages = messages + follow_up(answer, problems)
            if reason:
                report.rejected[reason] = report.rejected.get(reason, 0) + 1
            advance(1)
    return report
