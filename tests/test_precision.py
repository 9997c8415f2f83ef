"""ragcun.precision: the one place a --dtype name becomes a torch dtype, and its errors (no GPU needed: CUDA
support is faked where a test needs a GPU's answer)."""

from __future__ import annotations

import pytest
import torch

from ragcun.precision import DTYPES, check_dtype_name, cpu_has_native_bfloat16, precision_warning, resolve_dtype


@pytest.fixture
def bf16_gpu(monkeypatch):
    """Pretend the CUDA device supports bfloat16 (``True``) or not (``False``)."""
    def fake(supported: bool) -> None:
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: supported)
    return fake


def test_auto_on_the_cpu_is_float32():
    assert resolve_dtype("auto", torch.device("cpu")) is torch.float32
    assert resolve_dtype("auto", "cpu") is torch.float32


@pytest.mark.parametrize(("name", "dtype"), [("float32", torch.float32), ("bfloat16", torch.bfloat16)])
def test_the_cpu_computes_in_float32_and_bfloat16(name, dtype):
    assert resolve_dtype(name, torch.device("cpu")) is dtype


def test_an_unknown_name_lists_the_choices_and_names_the_flag():
    with pytest.raises(ValueError, match=r"^--dtype must be one of auto, float32, bfloat16-autocast, float16, "
                                         r"bfloat16, got 'fp8'$"):
        resolve_dtype("fp8", torch.device("cpu"))
    with pytest.raises(ValueError, match=r"^--eval-dtype must be one of"):
        resolve_dtype("fp8", torch.device("cpu"), flag="--eval-dtype")


def test_check_dtype_name_takes_other_choices():
    assert check_dtype_name("bfloat16-weights", (*DTYPES, "bfloat16-weights")) == "bfloat16-weights"
    with pytest.raises(ValueError, match=r"^--dtype must be one of float32, bfloat16, got 'auto'$"):
        check_dtype_name("auto", ("float32", "bfloat16"))


def test_float16_needs_cuda():
    with pytest.raises(ValueError, match=r"^--dtype float16 needs a CUDA device \(this one is cpu\); on a CPU use "
                                         r"bfloat16 or float32$"):
        resolve_dtype("float16", torch.device("cpu"))
    with pytest.raises(ValueError, match=r"^--train-dtype float16 needs a CUDA device"):
        resolve_dtype("float16", "cpu", flag="--train-dtype")
    assert resolve_dtype("float16", torch.device("cuda", 0)) is torch.float16


def test_bfloat16_on_a_gpu_without_it(bf16_gpu):
    bf16_gpu(False)
    with pytest.raises(ValueError, match=r"^--dtype bfloat16: this GPU \(cuda:0\) does not support bfloat16; "
                                         r"use float16 or float32$"):
        resolve_dtype("bfloat16", torch.device("cuda", 0))
    assert resolve_dtype("auto", torch.device("cuda", 0)) is torch.float32


def test_auto_on_a_gpu_with_bfloat16(bf16_gpu):
    bf16_gpu(True)
    assert resolve_dtype("auto", torch.device("cuda", 0)) is torch.bfloat16
    assert resolve_dtype("bfloat16", "cuda:0") is torch.bfloat16


def test_without_a_device_only_the_name_is_checked():
    assert resolve_dtype("float16", None) is torch.float16
    assert resolve_dtype("bfloat16", None) is torch.bfloat16
    with pytest.raises(ValueError, match=r"^--dtype auto: the device must be known"):
        resolve_dtype("auto", None)
    with pytest.raises(ValueError, match=r"^--dtype must be one of"):
        resolve_dtype("half", None)


def test_evaluation_autocast_is_built_on_it():
    from ragcun.evaluation.beir_eval import DTYPES as EVAL_DTYPES
    from ragcun.evaluation.pipeline import autocast_dtype, precision

    def resolve_autocast(name, device=None):  # evaluation's --dtype name -> its autocast dtype
        return autocast_dtype(precision(name, "eval"), device)

    cpu = torch.device("cpu")
    assert resolve_autocast("float32", cpu) is None
    assert resolve_autocast("bfloat16-weights", cpu) is None  # the older name of the whole-model bfloat16
    assert resolve_autocast("bfloat16", cpu) is None  # the whole encoder in bfloat16: nothing to autocast
    assert resolve_autocast("bfloat16-autocast", cpu) is torch.bfloat16
    assert resolve_autocast("float16") is torch.float16  # no device yet: the name only
    with pytest.raises(ValueError, match=r"^--dtype float16 needs a CUDA device"):
        resolve_autocast("float16", cpu)
    with pytest.raises(ValueError, match=rf"^--dtype must be one of {', '.join(EVAL_DTYPES)}, got 'auto'$"):
        resolve_autocast("auto", cpu)


def test_the_whole_model_bfloat16_is_checked_against_the_device_too(bf16_gpu):
    from ragcun.evaluation.pipeline import autocast_dtype, precision

    bf16_gpu(False)
    for name in ("bfloat16", "bfloat16-weights", "bfloat16-autocast"):
        with pytest.raises(ValueError, match=r"^--dtype bfloat16: this GPU \(cuda:0\) does not support bfloat16"):
            autocast_dtype(precision(name, "eval"), "cuda:0")


def test_training_precision_uses_it():
    from ragcun.training.optim import training_precision

    p = training_precision("auto", torch.device("cpu"))
    assert p.dtype is torch.float32 and p.autocast is None and p.scaler is None
    with pytest.raises(ValueError, match="float16 needs a CUDA device"):
        training_precision("float16", torch.device("cpu"))


def test_training_names_its_bfloat16_autocast_and_refuses_the_weights_cast():
    """Training's --dtype: bfloat16-autocast is what it does, the older bfloat16 means the same, bfloat16-weights
    (evaluation's whole-model cast) is refused naming --dtype."""
    from ragcun.precision import training_dtype
    from ragcun.training.optim import training_precision

    assert [training_dtype(n) for n in DTYPES] == ["auto", "float32", "bfloat16-autocast", "float16",
                                                   "bfloat16-autocast"]
    assert resolve_dtype("bfloat16-autocast", "cpu") is resolve_dtype("bfloat16", "cpu") is torch.bfloat16
    for name in ("bfloat16", "bfloat16-autocast"):
        p = training_precision(name, torch.device("cpu"))
        assert p.dtype is torch.bfloat16 and p.autocast.fast_dtype is torch.bfloat16 and p.scaler is None
    with pytest.raises(ValueError, match=r"^--dtype bfloat16-weights: training never casts the weights.*"
                                         r"--dtype bfloat16-autocast"):
        training_dtype("bfloat16-weights")
    with pytest.raises(ValueError, match=r"^--dtype must be one of auto, float32, bfloat16-autocast"):
        training_dtype("fp8")


def test_a_bfloat16_gpu_error_names_the_spelling_given(bf16_gpu):
    bf16_gpu(False)
    with pytest.raises(ValueError, match=r"^--dtype bfloat16-autocast: this GPU \(cuda:0\) does not support"):
        resolve_dtype("bfloat16-autocast", "cuda:0")


@pytest.fixture
def native_bf16(monkeypatch):
    """Pretend this CPU has native bfloat16 arithmetic (``True``) or only emulates it (``False``)."""
    import ragcun.precision

    def fake(native: bool) -> None:
        monkeypatch.setattr(ragcun.precision, "cpu_has_native_bfloat16", lambda: native)
    return fake


def test_bfloat16_on_a_cpu_that_emulates_it_is_named_slow(native_bf16):
    native_bf16(False)
    message = precision_warning(torch.bfloat16, "cpu")
    assert message.startswith("--dtype bfloat16: this CPU has no native bfloat16 arithmetic")
    assert "float32" in message and torch.backends.cpu.get_cpu_capability() in message
    assert message.endswith("; --dtype float32 (or auto) is faster on this machine")  # training's --dtype
    assert precision_warning(torch.bfloat16, torch.device("cpu"), flag="--eval-dtype").startswith("--eval-dtype")


def test_each_command_is_told_a_precision_it_accepts_instead_of_emulated_bfloat16(native_bf16):
    """eval beir and a plan's dtype have no auto: the warning used to suggest it to them as well."""
    from ragcun.evaluation.beir_eval import dtype_warning
    from ragcun.precision import PRECISIONS

    native_bf16(False)
    for name in ("bfloat16-weights", "bfloat16-autocast"):
        message = dtype_warning(name, "cpu")
        assert message.endswith("; --dtype float32 is faster on this machine") and "auto" not in message
    assert "float32" in PRECISIONS and "auto" not in PRECISIONS
    assert dtype_warning("float32", "cpu") is None

    # a plan's precision belongs to its design: the runner points to another plan, not to a flag
    from pathlib import Path

    from ragcun.ablation.plan import load_plan
    from ragcun.ablation.runner import PlanRunner

    shown: list[str] = []
    plan = load_plan(Path(__file__).resolve().parents[1] / "benchmarks" / "ablation" / "squad-distill.toml")
    PlanRunner(plan, show=shown.append).warn_if_precision_is_slow()
    assert len(shown) == 1
    assert shown[0].startswith("warning: the plan's dtype (squad-distill.toml) bfloat16: this CPU has no native")
    assert shown[0].endswith('; a plan with dtype = "float32" (and float32 training) is faster on this machine')
    for quiet in [(torch.float32, "cpu"), (None, "cpu"), (torch.bfloat16, None), (torch.bfloat16, "cuda:0")]:
        assert precision_warning(*quiet) is None, quiet


def test_bfloat16_on_a_cpu_with_native_support_is_not_warned_about(native_bf16):
    native_bf16(True)
    assert precision_warning(torch.bfloat16, "cpu") is None


def test_the_native_check_agrees_with_the_cpu_flags():
    """On Linux x86 the kernel lists the CPU's features: oneDNN computes bfloat16 natively with AVX512-BF16 or AMX
    (bf16 tiles), so the answer must match what /proc/cpuinfo says this machine has."""
    import platform
    from pathlib import Path

    cpuinfo = Path("/proc/cpuinfo")
    if platform.machine() not in ("x86_64", "AMD64") or not cpuinfo.is_file():
        pytest.skip("the CPU flags are read from /proc/cpuinfo on Linux x86 only")
    flags = next((line.split(":", 1)[1].split() for line in cpuinfo.read_text().splitlines()
                  if line.startswith("flags")), [])
    assert cpu_has_native_bfloat16() is bool({"avx512_bf16", "amx_bf16"} & set(flags)), flags


def test_eval_and_training_warn_before_an_emulated_bfloat16_run(native_bf16, tiny_model_dir, tmp_path):
    from _training_helpers import write_beir
    from click.testing import CliRunner

    from ragcun.cli.root import build_cli
    from ragcun.evaluation.beir_eval import evaluate_beir

    native_bf16(False)
    data = write_beir(tmp_path / "beir" / "tiny").parent
    report = evaluate_beir(f"hf:{tiny_model_dir}", "tiny", data, download=False, device="cpu",
                           dtype="bfloat16-weights", batch_size=8, show_progress=False)
    assert any(w.startswith("--dtype bfloat16: this CPU has no native") for w in report["warnings"])
    result = CliRunner().invoke(build_cli(), [
        "train", "--encoder", f"hf:{tiny_model_dir}", "--head", "linear", "--loss", "contrastive",
        "--train-data", "beir:tiny:test", "--data-dir", str(data), "--output-dir", str(tmp_path / "run"),
        "--steps", "1", "--batch-size", "4", "--dtype", "bfloat16", "--device", "cpu", "--no-progress"],
        catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "warning: --dtype bfloat16: this CPU has no native bfloat16" in " ".join(result.output.split())
