"""Generate context-controlled pairs with an LLM behind any OpenAI-compatible endpoint.

Two stages, as in ConVA's data recipe:
  1. ask for a batch of diverse positives for one value and one block (the block with the
     fewest pairs so far, so blocks fill round-robin), varying persona, setting and
     structure, as a JSON object;
  2. for each positive, ask for the negative that keeps person, scenario and wording and
     changes only what the value requires.
Each pair then goes through the validator's per-pair checks (`pair_problems`); failing or
malformed answers are skipped and counted. Pairs are appended to the output file one line
at a time (flush + fsync), so an interrupted run resumes where it stopped.

The API key is read from an environment variable (never printed or written);
`api_key_env="none"` is for local servers that need no key.
"""

from __future__ import annotations

import json
import re
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from difflib import SequenceMatcher
from pathlib import Path
from typing import Any, Protocol

from conva_mlx.data.dataset import BLOCKS, check_file_size, jsonl_lines, parse_jsonl
from conva_mlx.data.validate import NEAR_DUP_THRESHOLD, is_question_block, pair_problems, words
from conva_mlx.errors import ConvaError
from conva_mlx.fsutil import append_jsonl, repair_jsonl_tail
from conva_mlx.openai_chat import ChatClient, RetryPolicy, api_key_from_env
from conva_mlx.progress import ProgressCallback, progress_bar
from conva_mlx.values import check_value, load_values

DEFAULT_BASE_URL = "https://api.openai.com/v1"
DEFAULT_MODEL = "gpt-4o-mini"
DEFAULT_KEY_ENV = "OPENAI_API_KEY"

Sleep = Callable[[float], None]

BLOCK_GUIDES = {
    "first_person_scenario": "a first-person statement of something the speaker did or chose "
                             "(\"I ...\")",
    "third_person_scenario": "a third-person statement of something a named person did or "
                             "chose (\"Maria ...\")",
    "first_person_question": "a first-person question asking for advice or a plan "
                             "(\"How can I ...?\", \"Should I ...?\"), ending with '?'",
    "third_person_question": "a question about what a named person should do or how they "
                             "can do it (\"Should Tom ...?\"), ending with '?'",
}
SETTINGS = ("work", "family", "school", "friendship", "money", "health", "housing", "travel",
            "community", "online", "sport", "hobby", "food", "neighbourhood")
SYSTEM_PROMPT = ("You write sentences for research on human values (Schwartz's theory of basic "
                 "values). Answer with one JSON object and nothing else.")
MAX_STALE_ROUNDS = 5       # stop after this many rounds in a row without a usable pair
AVOID_EXAMPLES = 15        # existing positives quoted in stage 1 so they are not repeated


def rejected_text(rejected: dict[str, int]) -> str:
    """'3 rejected (too long 2, same 1)' for a run summary ('0 rejected' when none)."""
    text = f"{sum(rejected.values())} rejected"
    if rejected:
        text += " (" + ", ".join(f"{k} {v}" for k, v in sorted(rejected.items())) + ")"
    return text


@dataclass
class GenerateConfig:
    value: str
    n: int
    out: Path
    base_url: str = DEFAULT_BASE_URL
    model: str = DEFAULT_MODEL
    api_key_env: str = DEFAULT_KEY_ENV
    max_retries: int = 5          # retries per request after the first attempt
    temperature: float = 0.9
    batch_size: int = 5           # positives asked for per stage-1 request
    timeout: float = 120.0        # seconds per request
    backoff: float = 1.0          # first retry wait; doubles each retry
    max_backoff: float = 60.0


@dataclass
class GenerateReport:
    value: str
    out: str
    target: int
    existing: int = 0
    written: int = 0
    requests: int = 0             # answered requests (stage 1 and stage 2)
    retries: int = 0
    malformed: int = 0            # answers without the expected JSON
    duplicates: int = 0           # positives repeating (or nearly) an earlier one
    rejected: dict[str, int] = field(default_factory=dict)  # failed per-pair checks, by reason
    stopped: str = ""

    @property
    def complete(self) -> bool:
        return self.existing + self.written >= self.target

    def summary(self) -> str:
        text = (f"{self.out}: {self.existing + self.written}/{self.target} {self.value} pairs "
                f"({self.written} new, {self.existing} already there); {self.requests} requests, "
                f"{self.retries} retries, {self.malformed} malformed, {self.duplicates} "
                f"duplicates, {rejected_text(self.rejected)}")
        if self.stopped:
            text += f"; {self.stopped}"
        return text


# ---------------------------------------------------------------- key, parsing, files

_FENCE = re.compile(r"```[a-zA-Z]*")


def extract_json_object(text: str) -> dict[str, Any] | None:
    """The first JSON object in a model's answer (code fences and prose around it ignored)."""
    text = _FENCE.sub("", text)
    decoder = json.JSONDecoder()
    for m in re.finditer(r"\{", text):
        try:
            obj, _ = decoder.raw_decode(text, m.start())
        except json.JSONDecodeError:
            continue
        if isinstance(obj, dict):
            return obj
    return None


def parse_positives(text: str) -> list[tuple[str, str]] | None:
    """[(setting, positive)] from a stage-1 answer, or None when malformed."""
    obj = extract_json_object(text)
    if obj is None:
        return None
    items: Any = obj.get("items")
    if items is None:
        items = [obj] if "positive" in obj else next(
            (v for v in obj.values() if isinstance(v, list)), None)
    if not isinstance(items, list):
        return None
    out = []
    for item in items:
        if isinstance(item, str):
            setting, positive = "", item
        elif isinstance(item, dict) and isinstance(item.get("positive"), str):
            setting, positive = str(item.get("setting") or ""), item["positive"]
        else:
            continue
        positive = " ".join(positive.split())
        if positive:
            out.append((setting.strip().lower(), positive))
    return out or None


def parse_negative(text: str) -> str | None:
    obj = extract_json_object(text)
    if obj is None or not isinstance(obj.get("negative"), str):
        return None
    negative = " ".join(obj["negative"].split())
    return negative or None


def read_existing(path: Path, value: str) -> list[dict[str, Any]]:
    """Records already in `path`; a partial last line left by a crash is dropped."""
    if not path.exists():
        return []
    check_file_size(path)
    repair_jsonl_tail(path)
    with jsonl_lines(path) as lines:
        parsed = list(parse_jsonl(lines))
    records = []
    for lineno, rec, problem in parsed:
        if rec is None:
            raise ConvaError(f"{path}:{lineno}: {problem}")
        if not isinstance(rec.get("positive"), str):
            raise ConvaError(f"{path}:{lineno}: not a pair record")
        if rec.get("value") != value:
            raise ConvaError(f"{path}:{lineno}: holds pairs for '{rec.get('value')}', not "
                             f"'{value}'; choose another --out")
        records.append(rec)
    return records


# ---------------------------------------------------------------- prompts

def _stage1_messages(value: str, block: str, k: int, avoid: Sequence[str]) -> list[dict[str, str]]:
    definition = load_values()[value].definition
    lines = [
        f"Value: {value} ({definition}).",
        f"Block: {block}",
        f"Write {k} new sentences, each {BLOCK_GUIDES[block]}, in which the person clearly "
        f"prioritises {value}.",
        "Make them diverse: different personas (ages, jobs, cultures, names), different "
        f"settings (for example {', '.join(SETTINGS)}) and different sentence structures. "
        "Each sentence is 10 to 25 words, concrete and everyday, and does not name the value.",
    ]
    if avoid:
        lines.append("Do not repeat or paraphrase these existing sentences:")
        lines += [f"- {s}" for s in avoid]
    lines.append('Answer with JSON only: {"items": [{"setting": "<one word>", '
                 '"positive": "<sentence>"}, ...]}')
    return [{"role": "system", "content": SYSTEM_PROMPT},
            {"role": "user", "content": "\n".join(lines)}]


def _stage2_messages(value: str, block: str, positive: str) -> list[dict[str, str]]:
    definition = load_values()[value].definition
    question = (" It must stay a question ending with '?'."
                if is_question_block(block) else "")
    lines = [
        f"Value: {value} ({definition}).",
        f"In this sentence the person prioritises {value}:",
        f"Positive: {positive}",
        "Write its negative: keep the same person, scenario, setting, wording and sentence "
        f"structure, and change only what is needed so that the person does not prioritise "
        f"{value} (they choose or ask for something else instead). Change as few words as "
        f"possible and keep about the same length.{question}",
        'Answer with JSON only: {"negative": "<sentence>"}',
    ]
    return [{"role": "system", "content": SYSTEM_PROMPT},
            {"role": "user", "content": "\n".join(lines)}]


# ---------------------------------------------------------------- requests

class ChatSettings(Protocol):
    """What a generator's config gives its chat requests (GenerateConfig, ChoicesConfig)."""

    base_url: str
    model: str
    max_retries: int
    temperature: float
    timeout: float
    backoff: float
    max_backoff: float


class ChatCounts(Protocol):
    """Where a generator's report counts its requests and retries."""

    requests: int
    retries: int


class GeneratorChat:
    """One chat request of a generator, counted in its report."""

    def __init__(self, config: ChatSettings, report: ChatCounts, sleep: Sleep,
                 api_key: str) -> None:
        self.config, self.report = config, report
        policy = RetryPolicy(config.max_retries, config.backoff, config.max_backoff)
        self.client = ChatClient(config.base_url, api_key, config.timeout, policy, sleep,
                                 on_retry=self._retried)

    def _retried(self) -> None:
        self.report.retries += 1

    def __call__(self, messages: list[dict[str, str]]) -> str | None:
        """The answer's text, or None when the response itself is malformed."""
        answer = self.client.complete(self.config.model, messages, self.config.temperature)
        self.report.requests += 1
        return answer


# ---------------------------------------------------------------- the loop

def _reason(problem: str) -> str:
    for key in ("identical", "context-controlled", "length ratio", "'?'"):
        if key in problem:
            return {"'?'": "missing '?'"}.get(key, key)
    return problem


def _is_duplicate(tokens: list[str], seen: Sequence[list[str]]) -> bool:
    for other in seen:
        sm = SequenceMatcher(None, tokens, other, autojunk=False)
        if (sm.real_quick_ratio() > NEAR_DUP_THRESHOLD and sm.quick_ratio() > NEAR_DUP_THRESHOLD
                and sm.ratio() > NEAR_DUP_THRESHOLD):
            return True
    return False


def _next_block(counts: Counter[str]) -> str:
    return min(BLOCKS, key=lambda b: (counts[b], BLOCKS.index(b)))


def _id_number(record: dict[str, Any]) -> int:
    m = re.search(r"(\d+)$", str(record.get("id", "")))
    return int(m.group(1)) if m else 0


def generate_pairs(config: GenerateConfig, *, sleep: Sleep = time.sleep,
                   show_progress: bool = True,
                   progress: ProgressCallback | None = None) -> GenerateReport:
    """Append pairs to `config.out` until it holds `config.n`; returns what happened."""
    value = check_value(config.value)
    if config.n < 1:
        raise ConvaError("--n must be at least 1")
    api_key = api_key_from_env(config.api_key_env)
    existing = read_existing(config.out, value)
    report = GenerateReport(value=value, out=str(config.out), target=config.n,
                            existing=len(existing))
    remaining = config.n - len(existing)
    if remaining <= 0:
        return report
    chat = GeneratorChat(config, report, sleep, api_key)
    seen = [words(r["positive"]) for r in existing]
    recent = [str(r["positive"]) for r in existing]
    blocks = Counter(str(r.get("block", "")) for r in existing)
    number = max((_id_number(r) for r in existing), default=0)
    stale = 0
    with progress_bar(remaining, f"{value} pairs", show_progress, progress) as advance:
        while report.written < remaining:
            block = _next_block(blocks)
            want = min(config.batch_size, remaining - report.written)
            answer = chat(_stage1_messages(value, block, want, recent[-AVOID_EXAMPLES:]))
            candidates = parse_positives(answer) if answer is not None else None
            made = 0
            if candidates is None:
                report.malformed += 1
            for setting, positive in candidates or []:
                if made >= want:
                    break
                tokens = words(positive)
                if _is_duplicate(tokens, seen):
                    report.duplicates += 1
                    continue
                if is_question_block(block) and not positive.rstrip().endswith("?"):
                    report.rejected["missing '?'"] = report.rejected.get("missing '?'", 0) + 1
                    continue
                answer = chat(_stage2_messages(value, block, positive))
                negative = parse_negative(answer) if answer is not None else None
                if negative is None:
                    report.malformed += 1
                    continue
                problems = pair_problems(positive, negative, block)
                if problems:
                    reason = _reason(problems[0])
                    report.rejected[reason] = report.rejected.get(reason, 0) + 1
                    continue
                number += 1
                append_jsonl(config.out, {
                    "id": f"{value}-gen-{number:03d}", "value": value, "block": block,
                    "setting": setting or SETTINGS[number % len(SETTINGS)],
                    "positive": positive, "negative": negative})
                seen.append(tokens)
                recent.append(positive)
                blocks[block] += 1
                report.written += 1
                made += 1
                advance(1)
            stale = 0 if made else stale + 1
            if stale >= MAX_STALE_ROUNDS:
                report.stopped = (f"stopped after {stale} rounds in a row without a usable "
                                  f"pair")
                break
    return report
