"""The chat transcript: turns with the steering settings used, rendered as Markdown."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Turn:
    user: str
    settings: str  # ChatSettings.describe() at send time
    reply: str = ""
    summary: str = ""
    unsteered: str | None = None  # compare view: the method-none reply
    unsteered_summary: str = ""
    stopped: bool = False


def history(turns: list[Turn]) -> list[dict[str, str]]:
    """Chat messages for the model: every finished turn, steered replies as the answers."""
    msgs: list[dict[str, str]] = []
    for t in turns:
        msgs.append({"role": "user", "content": t.user})
        msgs.append({"role": "assistant", "content": t.reply})
    return msgs


def to_markdown(turns: list[Turn], model_id: str, pack: str) -> str:
    lines = ["# conva-mlx chat", "", f"- model: `{model_id}`", f"- pack: `{pack}`", ""]
    for i, t in enumerate(turns, 1):
        lines += [f"## Turn {i}", "", f"*Steering:* {t.settings}", "", "**User:**", "",
                  t.user, "", "**Assistant:**" + (" (stopped)" if t.stopped else ""), "",
                  t.reply, ""]
        if t.summary:
            lines += [f"`{t.summary}`", ""]
        if t.unsteered is not None:
            lines += ["**Assistant, unsteered (method none):**", "", t.unsteered, ""]
            if t.unsteered_summary:
                lines += [f"`{t.unsteered_summary}`", ""]
    return "\n".join(lines).rstrip() + "\n"
