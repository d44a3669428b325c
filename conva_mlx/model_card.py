"""The README.md model card written into every pack (and shown on the Hugging Face Hub)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .pack import Pack


def _value_rows(pack: Pack) -> list[str]:
    rows = ["| value | steered blocks | best held-out accuracy (block) | default P0 |",
            "|---|---|---|---|"]
    for name, v in pack.values.items():
        acc = v.probes.accuracies
        best = int(acc.argmax())
        layers = f"{min(v.layers)}-{max(v.layers)} ({len(v.layers)})" if v.layers else "-"
        rows.append(f"| {name} | {layers} | {acc[best]:.2f} ({best}) | {v.default_p0} |")
    return rows


def render_model_card(pack: Pack, eval_table: str | None = None) -> str:
    """Markdown model card with Hub metadata, values, layers, accuracies and usage."""
    m = pack.model
    values = ", ".join(pack.values)
    gate = pack.gate
    gate_text = ("no gate (imported fixed-strength vectors)" if gate is None else
                 f"block {gate.layer}, threshold {gate.threshold:.3f}; held-out precision "
                 f"{gate.metrics.precision:.2f}, recall {gate.metrics.recall:.2f}, "
                 f"F1 {gate.metrics.f1:.2f}")
    lines = [
        "---",
        f"base_model: {m.model_id}",
        "library_name: conva-mlx",
        "tags:", "- conva", "- steering-vector", "- control-vector", "- mlx",
        "- human-values",
        "---",
        "",
        f"# ConVA value vectors for {m.model_id}",
        "",
        "Value vectors and probes for Schwartz's basic human values, extracted with "
        "[conva-mlx](https://pypi.org/project/conva-mlx/) (Controlled Value Vector Activation, "
        "Jin et al., ACL 2025).",
        "",
        f"- Model: `{m.model_id}` ({m.architecture}, {m.num_layers} blocks, hidden size "
        f"{m.hidden_size}, fingerprint `{m.fingerprint}`)",
        f"- Values: {values}",
        f"- Gate: {gate_text}",
        f"- Dataset hash: `{pack.dataset_hash}`",
        "- Layer index k = output of decoder block k (0-based) = Hugging Face "
        "`hidden_states[k+1]` = llama.cpp `direction.k`.",
        "",
        *_value_rows(pack),
        "",
    ]
    if eval_table:
        lines += ["## Evaluation", "", eval_table, ""]
    lines += [
        "## Use",
        "",
        "```bash",
        "pip install conva-mlx",
        "conva-mlx pull <this-repo>",
        f"conva-mlx generate --pack hf://<this-repo> --model {m.model_id} "
        f"--value {next(iter(pack.values), 'benevolence')} \"Should I help my neighbour move?\"",
        "# PyTorch tensors and a llama.cpp control vector:",
        "conva-mlx export --pack hf://<this-repo> --value <value> --format all --out exported/",
        "```",
        "",
    ]
    return "\n".join(lines)
