#!/usr/bin/env python
"""One-call GPU check of moebench's MoE path (issue 11, item 8); prints one table.

Needs only torch and transformers (no ray, mlflow, datasets, network or hub model): a
BERT-base-shaped encoder with random weights (BertConfig + from_config) is upcycled to E=8
experts, top-2, with moebench's own upcycling, and checked for

  1. fp32 vs bf16-autocast outputs (eval mode, padded batch): relative error of the last
     hidden state and of the logits;
  2. dense vs MoE train-step time in bf16 autocast for each dispatch (loop, sorted, grouped_mm
     where this torch/device has it), interleaved rounds, medians, ratio MoE/dense
     (H200 target: MoE top-2 <= 1.5x dense); grouped_mm is first checked against sorted;
  3. a short training loop (default 200 steps on GPU) on synthetic padded batches for each
     method (vanilla, load_balancing, simsmoe, omoe): under bf16 autocast, and with every
     weight bf16 (the upcycled model cast, router included; at most 40 steps); final loss
     finite and tokens/s. A method that fails is a row, not a crash. One more row says
     whether upcycling a model that is already bf16 gives bf16 routers;
  4. one MoE layer's fwd+bwd expert-matmul TFLOP/s per dispatch, as a share of the bf16 peak
     (790 TFLOP/s dense on an H200): FLOPs = 3 * 2 * tokens * k * (2 * d * d_ff);
  5. host syncs inside one MoE layer's forward per dispatch, with and without padding
     (torch.cuda.set_sync_debug_mode("warn") warnings, and the profiler's
     cudaStreamSynchronize events); H200 target: none.

    PYTHONPATH=. python benchmarks/gpu_check.py [--device cpu|cuda] [--tiny] [--steps N]

--tiny is what CI runs on CPU (seconds). With PYTHONPATH=. and moebench not installed,
`moebench.methods` (installed from methods/ by pyproject's package-dir) is mapped here.
"""
from __future__ import annotations

import argparse
import copy
import importlib
import importlib.util
import math
import statistics
import sys
import time
import traceback
import warnings
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

HEAVY = ("ray", "mlflow", "datasets")
METHODS = {"vanilla": "Vanilla", "load_balancing": "LoadBalancing", "simsmoe": "SimSMoE", "omoe": "OMoE"}
PEAK_BF16 = 790e12  # H200 dense bf16 tensor-core peak, FLOP/s
STEP_TARGET = 1.5  # MoE top-2 train step / dense, bf16, H200


@dataclass(frozen=True)
class Shape:
    hidden: int
    layers: int
    heads: int
    d_ff: int
    vocab: int
    experts: int
    top_k: int
    batch: int
    seq: int


FULL = Shape(hidden=768, layers=12, heads=12, d_ff=3072, vocab=30522, experts=8, top_k=2, batch=32, seq=128)
# E=4 keeps SimSMoE's pair counters (about 1/#pairs per step) crossing cont_freq within a few steps.
TINY = Shape(hidden=64, layers=2, heads=4, d_ff=128, vocab=1000, experts=4, top_k=2, batch=4, seq=16)


_T0 = time.perf_counter()


def log(message: str) -> None:
    print(f"[{time.perf_counter() - _T0:6.1f} s] {message}", file=sys.stderr, flush=True)


# ---- imports that work with PYTHONPATH=. as well as with moebench installed --------------
def ensure_methods_package() -> None:
    """pyproject installs methods/ as moebench.methods; from a bare checkout, map it here."""
    try:
        importlib.import_module("moebench.methods")
        return
    except ModuleNotFoundError as error:
        if error.name not in ("moebench.methods", "moebench"):
            raise
    import moebench

    spec = importlib.util.spec_from_file_location(
        "moebench.methods", ROOT / "methods" / "__init__.py", submodule_search_locations=[str(ROOT / "methods")])
    module = importlib.util.module_from_spec(spec)
    sys.modules["moebench.methods"] = module
    spec.loader.exec_module(module)
    moebench.methods = module


def load_method(name: str):
    ensure_methods_package()
    return getattr(importlib.import_module(f"moebench.methods.{name}"), METHODS[name])


# ---- models and batches ------------------------------------------------------------------
def build_models(shape: Shape, seed: int = 0):
    """(dense, MoE) on CPU in fp32; the MoE is the dense model upcycled (identical at step 0)."""
    import transformers
    from transformers import AutoModelForSequenceClassification, BertConfig

    from moebench.moe.upcycle import MoEConfig, MoEModel

    transformers.logging.set_verbosity_error()
    config = BertConfig(vocab_size=shape.vocab, hidden_size=shape.hidden, num_hidden_layers=shape.layers,
                        num_attention_heads=shape.heads, intermediate_size=shape.d_ff,
                        max_position_embeddings=max(512, shape.seq), num_labels=2)
    torch.manual_seed(seed)
    dense = AutoModelForSequenceClassification.from_config(config)
    torch.manual_seed(seed + 1)
    moe = MoEModel(copy.deepcopy(dense), MoEConfig(shape.experts, shape.top_k))
    return dense, moe


def check_bf16_upcycle(dense, shape: Shape, rows) -> None:
    """Upcycling a model whose weights are already bf16 (what a trial loading bf16 weights does)
    must give bf16 routers and experts."""
    from moebench.moe.upcycle import MoEConfig, MoEModel

    torch.manual_seed(1)
    moe = MoEModel(copy.deepcopy(dense).to(torch.bfloat16), MoEConfig(shape.experts, shape.top_k))
    dtypes = sorted({str(p.dtype).replace("torch.", "") for p in moe.parameters()})
    router = str(moe.moe_layers[0].router.weight.dtype).replace("torch.", "")
    ok = dtypes == ["bfloat16"]
    rows.append(("upcycle a bf16 model", "parameter dtypes after upcycling",
                 f"router {router}; all parameters: {', '.join(dtypes)}", "ok" if ok else "FAIL (router not bf16)"))


def make_batches(shape: Shape, count: int, padded: bool, device, seed: int = 0) -> list[dict]:
    g = torch.Generator().manual_seed(seed)
    batches = []
    for _ in range(count):
        ids = torch.randint(5, shape.vocab, (shape.batch, shape.seq), generator=g)
        mask = torch.ones(shape.batch, shape.seq, dtype=torch.long)
        if padded:
            lengths = torch.randint(shape.seq // 4, shape.seq + 1, (shape.batch,), generator=g)
            lengths[0] = shape.seq
            mask = (torch.arange(shape.seq)[None, :] < lengths[:, None]).long()
            ids = ids * mask
        labels = torch.randint(0, 2, (shape.batch,), generator=g)
        batches.append({"input_ids": ids.to(device), "attention_mask": mask.to(device), "labels": labels.to(device)})
    return batches


def sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def autocast(device):
    return torch.autocast(device.type, dtype=torch.bfloat16)


def short_error(error: BaseException) -> str:
    text = f"{type(error).__name__}: {error}".splitlines()[0]
    return text if len(text) <= 110 else text[:107] + "..."


# ---- 1. fp32 vs bf16 ---------------------------------------------------------------------
def check_precision(moe, batch, device, rows):
    moe.eval()
    with torch.no_grad():
        ref, _ = moe(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], output_hidden_states=True)
        with autocast(device):
            low, _ = moe(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], output_hidden_states=True)
    real = batch["attention_mask"].bool()
    h_ref, h_low = ref.hidden_states[-1][real].float(), low.hidden_states[-1][real].float()
    hidden_rel = ((h_low - h_ref).norm() / h_ref.norm()).item()
    l_ref, l_low = ref.logits.float(), low.logits.float()
    logit_rel = ((l_low - l_ref).norm() / l_ref.norm()).item()
    logit_abs = (l_low - l_ref).abs().max().item()
    tol = 5e-2
    ok = hidden_rel < tol and logit_rel < tol and math.isfinite(logit_abs)
    rows.append(("fp32 vs bf16 autocast", "eval, padded batch, TF32 off",
                 f"hidden rel {hidden_rel:.1e}; logits rel {logit_rel:.1e}, max abs {logit_abs:.1e} (tol {tol:g})",
                 "ok" if ok else "FAIL"))
    moe.train()
    return ok


# ---- grouped_mm against sorted, on one layer ---------------------------------------------
def check_grouped(layer, x, mask, device, rows) -> bool:
    from moebench.moe import layer as layer_module

    if layer_module._GROUPED_MM is None:
        rows.append(("grouped_mm vs sorted", "one layer, bf16", "torch has no grouped_mm", "n/a"))
        return False
    with autocast(device):
        if not layer._grouped_supported(x):
            rows.append(("grouped_mm vs sorted", "one layer, bf16", f"unsupported here ({device.type}): falls back to sorted", "n/a"))
            return False
    results = {}
    try:
        for mode in ("sorted", "grouped_mm"):
            layer.dispatch_mode = mode
            layer.zero_grad(set_to_none=True)
            xi = x.detach().clone().requires_grad_(True)
            layer.token_mask = mask
            with autocast(device):
                out = layer(xi)
            layer.token_mask = None
            out.float().square().mean().backward()
            results[mode] = (out.detach().float(), xi.grad.float(), layer.experts[0].fc1.weight.grad.float())
    except Exception as error:  # noqa: BLE001 - a row, not a crash
        traceback.print_exc(limit=-4)
        rows.append(("grouped_mm vs sorted", "one layer, bf16", f"error: {short_error(error)}", "FAIL"))
        return False
    finally:
        layer.token_mask = None
        layer.dispatch_mode = "sorted"
        layer.zero_grad(set_to_none=True)
    rel = [((g - s).norm() / s.norm().clamp_min(1e-30)).item() for s, g in zip(results["sorted"], results["grouped_mm"])]
    ok = all(r < 3e-2 for r in rel)
    rows.append(("grouped_mm vs sorted", "one layer, bf16, padded, fwd+bwd",
                 f"rel diff out {rel[0]:.1e}, dx {rel[1]:.1e}, dW1 {rel[2]:.1e}", "ok" if ok else "FAIL"))
    return ok


# ---- 2. step time ------------------------------------------------------------------------
def plain_step(model, optimizer, batch, device):
    with autocast(device):
        output = model(**batch)
    output = output[0] if isinstance(output, tuple) else output
    output.loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def interleaved(steps: dict, rounds: int, warmup: int, device) -> dict[str, float]:
    for fn in steps.values():
        for _ in range(warmup):
            fn()
    times = {name: [] for name in steps}
    for _ in range(rounds):
        for name, fn in steps.items():
            sync(device)
            start = time.perf_counter()
            fn()
            sync(device)
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def check_step_time(dense, moe, modes, shape, device, rounds, rows):
    from moebench.moe.layer import set_dispatch_mode

    batch = make_batches(shape, 1, padded=False, device=device, seed=1)[0]
    opt_dense = torch.optim.AdamW(dense.parameters(), lr=1e-5)
    opt_moe = torch.optim.AdamW(moe.parameters(), lr=1e-5)
    dense.train()
    moe.train()

    def moe_step(mode):
        def step():
            set_dispatch_mode(moe, mode)
            plain_step(moe, opt_moe, batch, device)
        return step

    steps = {"dense": lambda: plain_step(dense, opt_dense, batch, device)}
    for mode in modes:
        try:
            moe_step(mode)()
        except Exception as error:  # noqa: BLE001 - a row, not a crash
            traceback.print_exc(limit=-4)
            rows.append((f"train step, MoE {mode}", "bf16 autocast", f"error: {short_error(error)}", "FAIL"))
            opt_moe.zero_grad(set_to_none=True)
            continue
        steps[mode] = moe_step(mode)
    modes = [mode for mode in modes if mode in steps]
    medians = interleaved(steps, rounds, warmup=3 if device.type == "cuda" else 1, device=device)
    set_dispatch_mode(moe, "sorted")
    tokens = shape.batch * shape.seq
    base = medians["dense"]
    # Multiply-adds per token and layer: attention projections, scores, FFN (k experts), router.
    d, f, s = shape.hidden, shape.d_ff, shape.seq
    dense_macs = 4 * d * d + 2 * s * d + 2 * d * f
    moe_macs = 4 * d * d + 2 * s * d + shape.top_k * 2 * d * f + d * shape.experts
    rows.append(("train step, dense", f"bf16 autocast, AdamW, {shape.batch}x{shape.seq}",
                 f"{base * 1e3:.1f} ms, {tokens / base:,.0f} tok/s; encoder FLOPs MoE/dense = "
                 f"{moe_macs / dense_macs:.2f}x (the compute-bound floor)", "-"))
    ratios = {}
    for mode in modes:
        ratio = medians[mode] / base
        ratios[mode] = ratio
        if device.type == "cuda":
            status = "met" if ratio <= STEP_TARGET else f"not met (<= {STEP_TARGET}x)"
        else:
            status = "- (target is for GPU)"
        rows.append((f"train step, MoE {mode}", f"E={shape.experts} top-{shape.top_k}, median of {rounds}",
                     f"{medians[mode] * 1e3:.1f} ms = {ratio:.2f}x dense, {tokens / medians[mode]:,.0f} tok/s", status))
    return ratios


# ---- 4. achieved TFLOP/s of one MoE layer ------------------------------------------------
def check_layer_flops(layer, shape, modes, device, iters, rows):
    tokens = shape.batch * shape.seq
    x = torch.randn(shape.batch, shape.seq, shape.hidden, device=device, requires_grad=True)
    grad = torch.randn_like(x)
    flops = 3 * 2 * tokens * shape.top_k * (2 * shape.hidden * shape.d_ff)
    for mode in modes:
        layer.dispatch_mode = mode

        def step():
            with autocast(device):
                out = layer(x)
            out.backward(grad)
            x.grad = None
            layer.zero_grad(set_to_none=True)

        for _ in range(3):
            step()
        sync(device)
        start = time.perf_counter()
        for _ in range(iters):
            step()
        sync(device)
        seconds = (time.perf_counter() - start) / iters
        achieved = flops / seconds
        share = f"= {achieved / PEAK_BF16:.1%} of 790 peak" if device.type == "cuda" else "(CPU: no peak share)"
        rows.append((f"MoE layer TFLOP/s, {mode}", f"fwd+bwd, {tokens} tokens, bf16",
                     f"{achieved / 1e12:.3g} TFLOP/s {share}, {seconds * 1e3:.2f} ms", "-"))
    layer.dispatch_mode = "sorted"


# ---- 5. host syncs inside the MoE forward ------------------------------------------------
def count_syncs(run, device) -> tuple[int, int | None]:
    """(sync-debug warnings, profiler cudaStreamSynchronize/DeviceSynchronize events) of run()."""
    run()  # warm-up: lazy initialisations are not the forward's syncs
    sync(device)
    torch.cuda.set_sync_debug_mode("warn")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            run()
    finally:
        torch.cuda.set_sync_debug_mode(0)
    warned = sum("synchroniz" in str(w.message).lower() for w in caught)
    profiled = None
    try:
        from torch.profiler import ProfilerActivity, profile

        names = ("cudaStreamSynchronize", "cudaDeviceSynchronize", "cudaEventSynchronize")

        def profiled_syncs(fn) -> int:
            sync(device)
            with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
                fn()  # no synchronize here: only fn's own syncs are counted
            return sum(e.count for e in prof.key_averages() if e.key in names)

        # Minus what the profiler itself adds around an empty region.
        profiled = profiled_syncs(run) - profiled_syncs(lambda: None)
    except Exception as error:  # noqa: BLE001 - the warning count stands alone
        log(f"profiler count unavailable: {short_error(error)}")
    return warned, profiled


def check_syncs(moe, layer, shape, modes, device, rows):
    if device.type != "cuda":
        rows.append(("host syncs in MoE forward", "all dispatches", "n/a on CPU (no device to sync with)", "-"))
        return {}
    from moebench.moe.layer import set_dispatch_mode

    batch = make_batches(shape, 1, padded=True, device=device, seed=2)[0]
    x = torch.randn(shape.batch, shape.seq, shape.hidden, device=device)
    mask = batch["attention_mask"].bool()
    counts = {}
    for mode in modes:
        layer.dispatch_mode = mode
        per = {}
        for label, layer_mask in (("no padding", None), ("padded", mask)):
            def run(layer_mask=layer_mask):
                layer.token_mask = layer_mask
                try:
                    with torch.no_grad(), autocast(device):
                        layer(x)
                finally:
                    layer.token_mask = None
            per[label] = count_syncs(run, device)
        set_dispatch_mode(moe, mode)

        def run_model():
            with torch.no_grad(), autocast(device):
                moe(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        model_warned, _ = count_syncs(run_model, device)
        set_dispatch_mode(moe, "sorted")
        worst = max(max(w, p or 0) for w, p in per.values())
        counts[mode] = worst
        status = "met" if worst == 0 else ("1 (counts read once)" if worst == 1 else "not met")
        text = "; ".join(f"{label}: {w} warned / {'?' if p is None else p} profiled" for label, (w, p) in per.items())
        rows.append((f"host syncs, one MoE layer fwd, {mode}", "sync-debug warns / profiler",
                     f"{text}; whole model fwd ({shape.layers} layers, padded): {model_warned}", status))
    layer.dispatch_mode = "sorted"
    return counts


# ---- 3. training loop per method ---------------------------------------------------------
def train_method(name, model, shape, steps, batches, device, use_autocast, deadline):
    method_cls = load_method(name)
    method = method_cls(method_cls.Params())
    method.attach(model)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW([
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": 0.01},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ], lr=2e-5)
    real_tokens = [int(b["attention_mask"].sum()) for b in batches]  # once, before timing
    warm = min(3, steps - 1)
    losses = []
    model.train()
    start = None
    counted = 0
    done = 0
    for step in range(steps):
        if step > warm and time.perf_counter() > deadline:
            break  # out of this run's share of the time budget
        done = step + 1
        if step == warm:
            sync(device)
            start = time.perf_counter()
        batch = batches[step % len(batches)]
        if use_autocast:
            with autocast(device):
                output, routing = model(**batch)
                aux = method.loss(routing)
        else:
            output, routing = model(**batch)
            aux = method.loss(routing)
        loss = output.loss + sum(aux.values()) if aux else output.loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        method.before_step(optimizer)
        optimizer.step()
        method.after_step(optimizer)
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.detach().float())
        if step >= warm:
            counted += real_tokens[step % len(batches)]
    sync(device)
    seconds = time.perf_counter() - start
    final = torch.stack(losses[-min(10, len(losses)):]).mean().item()
    return final, counted / seconds, done


def check_methods(moe_cpu, shape, steps, bf16_steps, device, rows, deadline):
    batches = make_batches(shape, 8, padded=True, device=device, seed=3)
    results = {}
    runs = [(variant, n, name) for variant, n in (("bf16 autocast", steps), ("bf16 weights", bf16_steps)) for name in METHODS]
    for index, (variant, n_steps, name) in enumerate(runs):
        # A share of what is left in proportion to the steps asked, so a slow method cannot
        # starve the others.
        share = n_steps / sum(n for _, n, _ in runs[index:])
        run_deadline = time.perf_counter() + max(5.0, (deadline - time.perf_counter()) * share)
        log(f"   {name}, {variant} ...")
        model = None
        try:
            model = copy.deepcopy(moe_cpu).to(device)
            if variant == "bf16 weights":  # every parameter bf16, router included; no autocast
                model = model.to(torch.bfloat16)
            final, tokens_per_s, done = train_method(name, model, shape, n_steps, batches, device,
                                                     variant == "bf16 autocast", run_deadline)
            ok = math.isfinite(final)
            cut = "" if done == n_steps else f" (time budget: {done} of {n_steps} steps)"
            result = f"final loss {final:.4f}{'' if ok else ' (NOT finite)'}, {tokens_per_s:,.0f} real tok/s{cut}"
            status = "ok" if ok else "FAIL"
        except Exception as error:  # noqa: BLE001 - a failing method is a row, not a crash
            log(f"--- {name} ({variant}) failed:")
            traceback.print_exc(limit=-4)
            result, status = f"error: {short_error(error)}", "FAIL"
        rows.append((f"train {name}", f"{variant}, {n_steps} steps", result, status))
        results[(name, variant)] = status
        del model
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return results


# ---- table -------------------------------------------------------------------------------
class Rows(list):
    """The table's rows; each is logged as it comes, so a run cut short still shows them."""

    def append(self, row) -> None:
        log("row: " + " | ".join(str(c) for c in row))
        super().append(row)


def guarded(label: str, rows: Rows, fn, *args, **kwargs):
    """Run one section; an unexpected error becomes a FAIL row instead of ending the check."""
    try:
        return fn(*args, **kwargs)
    except Exception as error:  # noqa: BLE001
        traceback.print_exc(limit=-6)
        rows.append((label, "section crashed", f"error: {short_error(error)}", "FAIL"))
        return None

def print_table(rows):
    headers = ("check", "setting", "result", "status")
    widths = [max(len(h), *(len(str(r[i])) for r in rows)) for i, h in enumerate(headers)]
    line = lambda cells: "| " + " | ".join(str(c).ljust(w) for c, w in zip(cells, widths)) + " |"  # noqa: E731
    print(line(headers))
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for row in rows:
        print(line(row))


def describe_device(device) -> str:
    import transformers

    from moebench.moe import layer as layer_module

    grouped = ("F.grouped_mm" if hasattr(torch.nn.functional, "grouped_mm") else
               "torch._grouped_mm" if layer_module._GROUPED_MM is not None else "none")
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        hw = (f"{props.name} (sm{props.major}{props.minor}, {props.total_memory / 2**30:.0f} GiB), "
              f"CUDA {torch.version.cuda}")
    else:
        hw = f"CPU, {torch.get_num_threads()} threads"
    return f"{hw}; torch {torch.__version__}, transformers {transformers.__version__}; grouped_mm: {grouped}"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--tiny", action="store_true", help="tiny config and few steps (CI, CPU)")
    parser.add_argument("--steps", type=int, help="training steps per method (default 200 on GPU, 12 with --tiny/CPU)")
    parser.add_argument("--rounds", type=int, help="interleaved timing rounds (default 20 on GPU, 2 otherwise)")
    parser.add_argument("--batch", type=int, help="override the batch size")
    parser.add_argument("--seq", type=int, help="override the sequence length")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("--device cuda: no CUDA device here; use --device cpu", file=sys.stderr)
        return 2
    device = torch.device(args.device)
    if args.tiny:
        # Tiny ops gain nothing from threads, and on a loaded machine a descheduled OpenMP
        # thread stalls every op (20x slower seen on 2 shared cores).
        torch.set_num_threads(1)
    shape = TINY if args.tiny else FULL
    if args.batch or args.seq:
        shape = Shape(**{**shape.__dict__, "batch": args.batch or shape.batch, "seq": args.seq or shape.seq})
    on_gpu = device.type == "cuda" and not args.tiny
    steps = args.steps or (200 if on_gpu else 12)
    bf16_steps = min(steps, 40)  # enough for OMoE's orthogonal phase (step 4+) and SimSMoE's pairs
    rounds = args.rounds or (20 if on_gpu else 2)
    started = time.perf_counter()

    from moebench.moe import layer as layer_module

    ensure_methods_package()
    for name in METHODS:
        load_method(name)
    heavy = [m for m in HEAVY if m in sys.modules]
    modes = ["loop", "sorted"] + (["grouped_mm"] if layer_module._GROUPED_MM is not None and device.type == "cuda" else [])
    rows = Rows()
    print(f"moebench GPU check on {describe_device(device)}")
    print(f"model: BERT-base-shaped encoder, random weights ({shape.layers} layers x {shape.hidden}, d_ff {shape.d_ff}, "
          f"{shape.heads} heads, vocab {shape.vocab}), upcycled E={shape.experts} top-{shape.top_k} in every layer; "
          f"batch {shape.batch} x seq {shape.seq}; default dispatch {layer_module.MoEFeedForward.dispatch_mode!r}; "
          f"heavy modules imported: {heavy or 'none'}", flush=True)

    log("building models ...")
    dense, moe_cpu = build_models(shape)

    log("1. fp32 vs bf16 ...")
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    moe = copy.deepcopy(moe_cpu).to(device)
    guarded("fp32 vs bf16 autocast", rows, check_precision, moe,
            make_batches(shape, 1, padded=True, device=device, seed=4)[0], device, rows)
    if device.type == "cuda":  # what trials use on CUDA
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True

    layer = moe.moe_layers[0]
    probe = make_batches(shape, 1, padded=True, device=device, seed=5)[0]
    x = torch.randn(shape.batch, shape.seq, shape.hidden, device=device)
    if "grouped_mm" in modes and not guarded("grouped_mm vs sorted", rows, check_grouped, layer, x,
                                             probe["attention_mask"].bool(), device, rows):
        modes.remove("grouped_mm")

    log("2. dense vs MoE step time ...")
    dense_dev = copy.deepcopy(dense).to(device)
    guarded("train step, dense vs MoE", rows, check_step_time, dense_dev, moe, modes, shape, device, rounds, rows)
    del dense_dev

    log("4. MoE layer TFLOP/s ...")
    guarded("MoE layer TFLOP/s", rows, check_layer_flops, layer, shape, modes, device, 20 if on_gpu else 2, rows)

    log("5. host syncs ...")
    guarded("host syncs in MoE forward", rows, check_syncs, moe, layer, shape, modes, device, rows)
    del moe, layer
    if device.type == "cuda":
        torch.cuda.empty_cache()

    log("3. methods ...")
    guarded("upcycle a bf16 model", rows, check_bf16_upcycle, dense, shape, rows)
    # Methods get what is left of ~5 minutes (GPU), so the whole check stays under 6.
    deadline = started + (300 if on_gpu else 3600)
    guarded("train methods", rows, check_methods, moe_cpu, shape, steps, bf16_steps, device, rows, deadline)

    rows.append(("wall time", "whole script", f"{time.perf_counter() - started:.0f} s", "-"))
    print()
    print_table(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
