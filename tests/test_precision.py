"""--precision (autocast, fp16 loss scaling), --deterministic, and methods that follow the model's dtype."""
import contextlib
import dataclasses
import math
import os
import subprocess
import sys

import pandas as pd
import pytest
import torch

from moebench.cli import build_parser, resolve_run_options, run_config_from_args
from moebench.config import TrainConfig, TrialConfig, stable_hash
from moebench.errors import UsageError
from moebench.leaderboard.choose import check_one_budget
from moebench.method import Method
from moebench.moe.upcycle import MoEConfig, MoEModel, load_pretrained
from moebench.registry import METHODS
from moebench.train import make_optimizer, run_trial, train_step

# Reach every code path in a few steps: OMoE's orthogonal phase, SimSMoE's CKA penalty (its head).
PARAMS = {"omoe": {"accumulate_steps": 2, "orthogonal_steps": 2}, "simsmoe": {"cont_freq": 0.0}}


def tiny_moe(tiny_model_dir, name, dtype=torch.float32):
    """Cast before upcycling: the router and the method's own tensors must follow the FFN's dtype."""
    torch.manual_seed(0)
    hf = load_pretrained(tiny_model_dir, "AutoModelForSequenceClassification", num_labels=2).to(dtype)
    method_cls = METHODS.get(name)
    model = MoEModel(hf, MoEConfig(4, 2, upcycle="noise") if method_cls.uses_moe else None)
    params = {k: v for k, v in PARAMS.get(name, {}).items() if k in {f.name for f in dataclasses.fields(method_cls.Params)}}
    method = method_cls(method_cls.Params(**params))
    method.attach(model)
    method.start(6, lambda: [batch()])  # the trial's step count and training data (hash, smoe_dropout)
    return model, method


def batch():
    generator = torch.Generator().manual_seed(0)
    mask = torch.ones(4, 8, dtype=torch.long)
    mask[1, 5:] = 0  # padding goes through the dispatch's dropped bucket
    return {"input_ids": torch.randint(1000, 2000, (4, 8), generator=generator), "attention_mask": mask,
            "labels": torch.tensor([0, 1, 0, 1])}


@pytest.mark.parametrize("mode", ["bf16 autocast", "bf16 weights"])
@pytest.mark.parametrize("name", METHODS.names())
def test_every_method_trains_in_bf16(name, mode, tiny_model_dir):
    weights = torch.bfloat16 if mode == "bf16 weights" else torch.float32
    model, method = tiny_moe(tiny_model_dir, name, weights)
    assert {p.dtype for p in model.parameters()} == {weights}  # router, SimSMoE head included
    ctx = torch.autocast("cpu", dtype=torch.bfloat16) if mode == "bf16 autocast" else contextlib.nullcontext()
    optimizer = make_optimizer(model, 1e-3, 0.01)
    experts = [p for layer in model.moe_layers for p in layer.experts.parameters()]
    before = [p.detach().clone() for p in model.parameters()]
    experts_before = [p.detach().clone() for p in experts]
    for _ in range(6):
        losses = train_step(model, method, optimizer, batch(), ctx=ctx)
        assert all(math.isfinite(v) for v in losses.values()), losses
    assert any(not torch.equal(b, p) for b, p in zip(before, model.parameters()))
    # the experts themselves moved, not only attention and the head (dense has none)
    assert not experts or any(not torch.equal(b, p) for b, p in zip(experts_before, experts))
    assert {p.dtype for p in model.parameters()} == {weights}
    assert all(math.isfinite(v) or math.isnan(v) for v in method.diagnostics().values())


class GradientSpy(Method):
    name = "spy"

    def attach(self, model):
        self.model, self.norms = model, []

    def before_step(self, optimizer):
        grads = [p.grad for p in self.model.parameters() if p.grad is not None]
        self.norms.append(torch.linalg.vector_norm(torch.stack([g.norm() for g in grads])).item())


def test_fp16_scaler_unscales_before_the_hooks_and_skips_overflowing_steps(tiny_model_dir):
    ctx = torch.autocast("cpu", dtype=torch.float16)
    norms = {}
    for scaled in (False, True):
        model, _ = tiny_moe(tiny_model_dir, "vanilla")
        spy = GradientSpy()
        spy.attach(model)
        scaler = torch.amp.GradScaler("cpu", init_scale=1024.0) if scaled else None
        train_step(model, spy, torch.optim.SGD(model.parameters(), lr=0.0), batch(), max_grad_norm=1e9, ctx=ctx, scaler=scaler)
        norms[scaled] = spy.norms[0]
    assert norms[True] == pytest.approx(norms[False], rel=1e-2)  # not 1024 times larger

    model, method = tiny_moe(tiny_model_dir, "omoe")
    optimizer = make_optimizer(model, 1e-3, 0.01)
    # A scale that overflows fp16 gradients, backed off fast so the next step can succeed.
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 40, backoff_factor=2.0 ** -30)
    before = [p.detach().clone() for p in model.parameters()]
    losses = train_step(model, method, optimizer, batch(), ctx=ctx, scaler=scaler)
    assert all(math.isfinite(v) for v in losses.values())  # a skipped step is no failure
    assert all(torch.equal(b, p) for b, p in zip(before, model.parameters())) and scaler.get_scale() < 2.0 ** 40
    for _ in range(3):
        train_step(model, method, optimizer, batch(), ctx=ctx, scaler=scaler)
    assert any(not torch.equal(b, p) for b, p in zip(before, model.parameters()))


def trial(model, data_dir, precision="fp32", method="load_balancing", deterministic=False):
    params = {"aux_coef": 0.01, "z_loss_coef": 0.001} if method == "load_balancing" else {}
    return TrialConfig(method, "rte", 0, model, data_dir,
                       TrainConfig(epochs=1, batch_size=8, lr=1e-3, max_seq_length=32, max_train_samples=24,
                                   max_eval_samples=16, precision=precision),
                       MoEConfig(4, 2), params, deterministic=deterministic)


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_trial_runs_end_to_end_in_reduced_precision(precision, tiny_model_dir, data_dir):
    reports = []
    final = run_trial(trial(tiny_model_dir, data_dir, precision), report=reports.append, progress=False).metrics
    assert math.isfinite(final["main_score"]) and math.isfinite(final["select_main_score"])
    assert math.isfinite(reports[0]["train/loss"]) and math.isfinite(reports[0]["diagnostics/expert_cka"])


def test_deterministic_trial_runs_on_cpu(tiny_model_dir, data_dir):
    try:
        first = run_trial(trial(tiny_model_dir, data_dir, deterministic=True), progress=False).metrics
        assert torch.are_deterministic_algorithms_enabled() and torch.backends.cudnn.deterministic
        second = run_trial(trial(tiny_model_dir, data_dir, method="simsmoe", deterministic=True), progress=False).metrics
        assert math.isfinite(first["main_score"]) and math.isfinite(second["main_score"])
        assert os.environ["CUBLAS_WORKSPACE_CONFIG"]
        run_trial(trial(tiny_model_dir, data_dir), progress=False)
        assert not torch.are_deterministic_algorithms_enabled()  # set per trial, both ways
    finally:
        torch.use_deterministic_algorithms(False)
        torch.backends.cudnn.deterministic = False


def test_precision_is_identity_and_fp32_hashes_as_before_the_option(tmp_path):
    fp32 = trial("m", None)
    assert fp32.flat_params()["train.precision"] == "fp32"
    legacy = {k: v for k, v in fp32.flat_params().items() if k != "train.precision"}
    assert fp32.fingerprint() == stable_hash(legacy)  # runs logged before --precision resume
    bf16 = trial("m", None, "bf16")
    assert bf16.fingerprint() != fp32.fingerprint() and bf16.config_id() != fp32.config_id()
    assert trial("m", None, deterministic=True).fingerprint() == fp32.fingerprint()
    assert "deterministic" not in str(trial("m", None, deterministic=True).flat_params())
    assert TrialConfig.from_dict(trial("m", None, "fp16", deterministic=True).to_dict()) == trial("m", None, "fp16", deterministic=True)

    def runs(*precisions):
        rows = [{f"params.{k}": v for k, v in fp32.flat_params().items()} for _ in precisions]
        for row, precision in zip(rows, precisions):
            if precision is None:
                del row["params.train.precision"]
            else:
                row["params.train.precision"] = precision
        return pd.DataFrame(rows)

    check_one_budget(runs(None, "fp32"))  # an older run without the param is an fp32 run
    with pytest.raises(UsageError, match="train.precision: bf16, fp32"):
        check_one_budget(runs(None, "bf16"))


def test_options_flow_from_the_command_line_and_the_file(tmp_path):
    path = tmp_path / "exp.yaml"
    path.write_text("methods: [vanilla]\ntasks: rte\nprecision: bf16\ndeterministic: true\n")
    parser = build_parser()
    options = resolve_run_options(parser.parse_args(["run", "--config", str(path)]), parser.run_actions)
    cfg = run_config_from_args(options)
    assert cfg.train.precision == "bf16" and cfg.deterministic
    options = resolve_run_options(parser.parse_args(["run", "--config", str(path), "--precision", "fp16", "--no-deterministic"]),
                                  parser.run_actions)
    cfg = run_config_from_args(options)
    assert cfg.train.precision == "fp16" and not cfg.deterministic
    defaults = run_config_from_args(resolve_run_options(parser.parse_args(["run", "--methods", "vanilla", "--tasks", "rte"]),
                                                        parser.run_actions))
    assert defaults.train.precision == "fp32" and not defaults.deterministic


def test_bad_precision_is_one_line_exit_2(tmp_path, data_dir):
    out = tmp_path / "out"
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    result = subprocess.run([sys.executable, "-m", "moebench.cli", "run", "--methods", "vanilla", "--tasks", "rte",
                             "--precision", "fp8", "--data-dir", data_dir, "--output-dir", str(out)],
                            capture_output=True, text=True, env=env)
    assert result.returncode == 2
    assert result.stderr.strip() == "moebench: error: --precision must be one of fp32, bf16, fp16, auto, got 'fp8'"
    assert not out.exists()


@pytest.mark.parametrize("native, expected", [(True, "bf16"), (False, "fp32")])
def test_auto_precision_resolves_before_any_trial_exists(monkeypatch, native, expected):
    """auto never reaches a trial: its identity, params and autocast carry what it computes in."""
    import moebench.hardware

    asked = []
    monkeypatch.setattr(moebench.hardware, "bf16_is_native", lambda on_gpu: asked.append(on_gpu) or (native, "because"))
    parser = build_parser()
    options = resolve_run_options(parser.parse_args(["run", "--methods", "vanilla", "--tasks", "rte", "--precision", "auto"]),
                                  parser.run_actions)
    cfg = run_config_from_args(options)
    assert cfg.train.precision == expected
    assert {t.flat_params()["train.precision"] for t in cfg.trials()} == {expected}
    assert asked == [torch.cuda.device_count() > 0]
    assert cfg.auto_precision() == (expected, "because")
    with pytest.raises(UsageError, match="with --address give --precision fp32 or bf16"):
        dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, precision="auto"), address="10.0.0.1:6379")


def test_auto_precision_reads_the_cpu_flags(monkeypatch):
    from moebench.hardware import bf16_is_native

    for avx512_bf16, amx, native in [(True, False, True), (False, True, True), (False, False, False)]:
        monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16, raising=False)
        monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx, raising=False)
        assert bf16_is_native(on_gpu=False)[0] is native
    monkeypatch.delattr(torch.cpu, "_is_avx512_bf16_supported")
    monkeypatch.delattr(torch.cpu, "_is_amx_tile_supported")
    assert bf16_is_native(on_gpu=False) == (False, "this CPU has neither AVX-512 BF16 nor AMX instructions "
                                                   "(bf16 would be emulated, slower than fp32)")
