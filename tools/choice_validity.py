"""Is the choice instrument valid? Its shifts beside careful readers' labels.

Reads a `conva-mlx choices` run on the calibration half (likelihood form, methods none,
ica, caa, conva and caa:4, at least the first 20 odd dilemmas per value) and the
reader-labelled replies of the default model (conva_mlx/data/judge/replies.jsonl: the same
dilemmas, the same methods, 64-token greedy replies). Prints, as Markdown:
1. per method: the readers' CSR and the instrument's mean shift with its interval;
2. the rank agreement (Spearman) between the instrument's shift and the readers' CSR shift
   (method CSR minus none's, per value) over method x value cells, and per method;
3. per reply: whether the reader's "prioritises the value" label agrees with the side the
   likelihood favours (LR > 0) more often than chance (Cohen's kappa), and the AUC of LR
   for the label; the same for the shift against unsteered.
Usage: .venv/bin/python tools/choice_validity.py RUN_DIR [--labels FILE] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from conva_mlx.evaluation.choices import UNSTEERED, MethodSetting, score_key  # noqa: E402
from conva_mlx.evaluation.stats import paired_shift  # noqa: E402
from conva_mlx.evaluation.store import JsonlStore  # noqa: E402

LABELS = ROOT / "conva_mlx" / "data" / "judge" / "replies.jsonl"
SETTINGS = {"none": MethodSetting("none"), "ica": MethodSetting("ica"),
            "caa": MethodSetting("caa"), "conva": MethodSetting("conva"),
            "caa-x4": MethodSetting("caa", 4.0)}


def spearman(a: list[float], b: list[float]) -> float:
    from scipy.stats import spearmanr

    return float(spearmanr(a, b).statistic)


def kappa(a: list[bool], b: list[bool]) -> float:
    x, y = np.asarray(a, bool), np.asarray(b, bool)
    po = float((x == y).mean())
    pe = float(x.mean() * y.mean() + (1 - x.mean()) * (1 - y.mean()))
    return (po - pe) / (1 - pe) if pe < 1 else 0.0


def auc(scores: list[float], labels: list[bool]) -> float:
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(labels, scores)) if 0 < sum(labels) < len(labels) else float("nan")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("run", type=Path)
    ap.add_argument("--labels", type=Path, default=LABELS)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    store = JsonlStore(args.run / "choices.jsonl")
    labels = [json.loads(line) for line in args.labels.read_text().splitlines() if line]

    def score(method: str, value: str, pid: str) -> float | None:
        s = SETTINGS[method]
        rec = store.get(score_key("likelihood", s, UNSTEERED if not s.steers else value, pid))
        return None if rec is None else float(rec["score"])

    rows = []
    for r in labels:
        x, base = score(r["method"], r["value"], r["prompt_id"]), score("none", r["value"],
                                                                         r["prompt_id"])
        if x is not None and base is not None:
            rows.append({**r, "lr": x, "shift": x - base})
    print(f"{len(rows)} of {len(labels)} labelled replies have instrument scores\n")
    out: dict[str, Any] = {"n_replies": len(rows)}
    values = sorted({r["value"] for r in rows})
    print("| method | replies | readers' CSR | instrument shift | 95% CI | moved |")
    print("|---|---|---|---|---|---|")
    per_method: dict[str, Any] = {}
    for m in SETTINGS:
        rs = [r for r in rows if r["method"] == m]
        if not rs:
            continue
        sh = paired_shift([[r["lr"] for r in rs]], [[r["lr"] - r["shift"] for r in rs]])
        csr = float(np.mean([r["value_yes"] for r in rs]))
        per_method[m] = {"n": len(rs), "csr": round(csr, 3), **sh.as_dict()}
        print(f"| {m} | {len(rs)} | {csr:.2f} | {sh.mean:+.2f} | [{sh.lo:+.2f}, {sh.hi:+.2f}] | "
              f"{sh.moved:.2f} |")
    out["per_method"] = per_method
    # method x value cells (methods with 20 replies per value)
    cells_i, cells_r, cell_rows = [], [], []
    for m in ("ica", "caa", "conva"):
        for v in values:
            rs = [r for r in rows if r["method"] == m and r["value"] == v]
            base = [r for r in rows if r["method"] == "none" and r["value"] == v]
            if len(rs) < 5 or not base:
                continue
            ci = float(np.mean([r["shift"] for r in rs]))
            cr = float(np.mean([r["value_yes"] for r in rs]) - np.mean([r["value_yes"]
                                                                       for r in base]))
            cells_i.append(ci)
            cells_r.append(cr)
            cell_rows.append({"method": m, "value": v, "instrument_shift": round(ci, 3),
                              "reader_csr_shift": round(cr, 3)})
    rho_cells = spearman(cells_i, cells_r) if len(cells_i) > 2 else float("nan")
    ms = [m for m in per_method if m != "none"]
    rho_methods = spearman([per_method[m]["shift"] for m in ms],
                           [per_method[m]["csr"] for m in ms]) if len(ms) > 2 else float("nan")
    print(f"\nSpearman rho, instrument shift vs readers' CSR shift over {len(cells_i)} method x "
          f"value cells (ica, caa, conva): {rho_cells:.2f}")
    print(f"Spearman rho over methods ({', '.join(ms)}): {rho_methods:.2f}")
    disagree = sorted(cell_rows, key=lambda c: -abs(np.sign(c["instrument_shift"])
                                                     - np.sign(c["reader_csr_shift"])))[:6]
    print("Cells where they disagree most in sign: " + "; ".join(
        f"{c['method']}/{c['value']} instrument {c['instrument_shift']:+.2f}, readers "
        f"{c['reader_csr_shift']:+.2f}" for c in disagree
        if np.sign(c["instrument_shift"]) != np.sign(c["reader_csr_shift"])))
    out.update(rho_cells=round(rho_cells, 3), rho_methods=round(rho_methods, 3),
               cells=cell_rows)
    yes = [bool(r["value_yes"]) for r in rows]
    fav = [r["lr"] > 0 for r in rows]
    k = kappa(fav, yes)
    agree = float(np.mean([a == b for a, b in zip(fav, yes)]))
    chance = float(np.mean(fav) * np.mean(yes) + (1 - np.mean(fav)) * (1 - np.mean(yes)))
    a_lr, a_shift = auc([r["lr"] for r in rows], yes), auc([r["shift"] for r in rows], yes)
    print(f"\nPer reply (n={len(rows)}): the reader's label agrees with the side the "
          f"likelihood favours on {agree:.2f} of replies (chance {chance:.2f}, Cohen's kappa "
          f"{k:.2f}); AUC of LR for the label {a_lr:.2f}, of the shift {a_shift:.2f}.")
    out.update(per_reply={"agreement": round(agree, 3), "chance": round(chance, 3),
                          "kappa": round(k, 3), "auc_lr": round(a_lr, 3),
                          "auc_shift": round(a_shift, 3)})
    if args.json:
        args.json.write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
