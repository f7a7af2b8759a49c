"""launch/benchmark_gpu.py: the --smoke run on the CPU in a subprocess whose imports of the
packages the GPU machine lacks are blocked (a sys.meta_path finder installed by a
sitecustomize module), the torch-missing skip, the time budget, and the report table."""

import importlib.util
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "launch" / "benchmark_gpu.py"
# Packages of this project's environment that the GPU machine must not need. absl and etils
# are not listed: jax, flax and chex import them themselves (they are on that machine).
NOT_ON_GPU_MACHINE = (
    "grain", "orbax", "tensorflow_datasets", "tensorflow", "matplotlib", "ml_collections",
    "simplejpeg", "pyspng", "PIL", "cv2", "scipy", "sklearn", "pandas", "tensorboardX",
    "array_record",
)  # fmt: skip

BLOCKER = """
import importlib.abc, importlib.machinery, os, sys

BLOCKED = set(os.environ["BENCH_BLOCKED"].split(","))


class BlockedLoader(importlib.abc.Loader):
    def create_module(self, spec):
        frame = sys._getframe(1)  # the file whose import statement asked for it
        while frame is not None and frame.f_code.co_filename.startswith("<frozen"):
            frame = frame.f_back
        where = frame.f_code.co_filename if frame is not None else "?"
        with open(os.environ["BENCH_BLOCK_LOG"], "a") as f:
            f.write(f"{spec.name}\\t{where}\\n")
        raise ModuleNotFoundError(f"{spec.name} is blocked (not on the GPU machine)", name=spec.name)

    def exec_module(self, module):
        pass


class BlockFinder(importlib.abc.MetaPathFinder):
    # A spec without origin: importing fails, while probes such as importlib.util.find_spec
    # (torch._dynamo checks for optional packages that way) see no file to inspect.
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            return importlib.machinery.ModuleSpec(name, BlockedLoader(), origin=None)
        return None


sys.meta_path.insert(0, BlockFinder())
"""


def load_script():
    spec = importlib.util.spec_from_file_location("benchmark_gpu_under_test", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve their module while being built
    spec.loader.exec_module(module)
    return module


def torch_available() -> bool:
    return importlib.util.find_spec("torch") is not None


def run_blocked(tmp_path, args, blocked=NOT_ON_GPU_MACHINE, timeout=900):
    """Runs the script with ``blocked`` packages unimportable; returns (proc, report, log)."""
    site = tmp_path / "site"
    site.mkdir(exist_ok=True)
    (site / "sitecustomize.py").write_text(textwrap.dedent(BLOCKER))
    log = tmp_path / "blocked.log"
    out = tmp_path / "bench.json"
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(site), str(REPO)])
    env.update(BENCH_BLOCKED=",".join(blocked), BENCH_BLOCK_LOG=str(log), JAX_PLATFORMS="cpu")
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--smoke", f"--out={out}", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads(out.read_text())
    attempts = [line.split("\t") for line in log.read_text().splitlines()] if log.exists() else []
    # Optional imports inside jax/torch (e.g. torch tries pandas) fail harmlessly; the
    # project's own files and the script must not even try.
    own = (REPO / "hfrjax", REPO / "launch")
    ours = [(n, where) for n, where in attempts if any(Path(where).is_relative_to(d) for d in own)]
    return proc, report, ours


def check_torch_row(rec):
    if torch_available():
        assert rec["status"] == "ok", rec
        r = rec["result"]
        assert r["images_per_s"] > 0 and r["loss_first"] == pytest.approx(r["loss_first"])
        assert r["flops_flop_counter"] > 0
    else:
        assert rec["status"] == "skipped" and "torch is not installed" in rec["reason"]


def test_smoke_sections_without_the_packages_the_gpu_machine_lacks(tmp_path):
    sections = "ir50_torch,eval,classifier:2000:sharded,classifier:2000:pfc"
    proc, report, attempted = run_blocked(tmp_path, [f"--sections={sections}"])
    assert attempted == []  # no project file even tried to import a blocked package
    secs = report["sections"]
    assert list(secs) == sections.split(",")
    check_torch_row(secs["ir50_torch"])
    ev = secs["eval"]
    assert ev["status"] == "ok", ev
    assert ev["result"]["pairs"] == 600 * 600 and ev["result"]["pairs_per_s"] > 0
    assert 0 < ev["result"]["rank1"] <= 1
    for scheme in ("sharded", "pfc"):
        rec = secs[f"classifier:2000:{scheme}"]
        assert rec["status"] == "ok", rec
        r = rec["result"]
        assert r["step_s"] > 0 and r["memory"]["peak_estimate"] > 0
        # One step moves the loss: the classifier and the features do get gradients.
        assert r["loss_last"] != r["loss_first"]
    assert secs["classifier:2000:pfc"]["result"]["sampled_rows"] == 200
    # The table is the last thing printed, one row per section.
    tail = proc.stdout.strip().splitlines()
    assert tail[-len(sections.split(",")) - 2] == "| benchmark | result | details |"
    assert "pairs/s" in proc.stdout and "Partial FC r=0.1" in proc.stdout
    assert report["table"] in proc.stdout


def test_torch_missing_is_a_clean_skip_in_an_isolated_section(tmp_path):
    proc, report, attempted = run_blocked(
        tmp_path, ["--isolate", "--sections=ir50_torch"], NOT_ON_GPU_MACHINE + ("torch",)
    )
    rec = report["sections"]["ir50_torch"]
    assert rec["status"] == "skipped" and "torch is not installed" in rec["reason"]
    assert [name for name, _ in attempted] == ["torch"]
    assert "| ir50_torch | skipped | torch is not installed" in proc.stdout


def test_time_budget_and_bad_section_names(tmp_path):
    proc, report, _ = run_blocked(tmp_path, ["--budget_s=0"])
    bench = load_script()
    assert list(report["sections"]) == bench.section_names(bench.SMOKE)
    assert {r["status"] for r in report["sections"].values()} == {"timeout"}
    assert "total time budget spent" in proc.stdout
    bad = subprocess.run(
        [sys.executable, str(SCRIPT), "--smoke", "--sections=ir50", f"--out={tmp_path / 'x'}"],
        capture_output=True,
        text=True,
    )
    assert bad.returncode == 2 and "unknown section(s) ['ir50']" in bad.stderr
    # A failing section becomes an error record (with its traceback), not an exception.
    rec = bench.guarded("nonsense", bench.SMOKE, deadline=0.0, smoke=True)
    assert rec["status"] == "error" and "unknown section 'nonsense'" in rec["error"]
    assert "Traceback" in rec["traceback"] and rec["elapsed_s"] >= 0


def test_peaks_flops_and_derived_rows():
    bench = load_script()
    assert bench.datasheet_peak("NVIDIA H200") == pytest.approx(989.4e12)
    assert bench.datasheet_peak("NVIDIA H100 PCIe") == pytest.approx(756.5e12)
    assert bench.datasheet_peak("NVIDIA H100 80GB HBM3") == pytest.approx(989.4e12)
    assert bench.datasheet_peak("cpu") is None
    assert bench._cost_flops([{"flops": 3.0}]) == 3.0 and bench._cost_flops({"flops": 2}) == 2.0
    assert bench._cost_flops({}) is None and bench._cost_flops(None) is None
    jax_rec = {
        "status": "ok",
        "result": {
            "step_s": 0.1, "step_min_s": 0.09, "batch": 256, "images_per_s": 2560.0,
            "compile_s": 30.0, "environment": {"device_kind": "NVIDIA H200", "jax": "x"},
            "flops_compiled": 5e13, "flops_lowered": 4.9e13, "flops_source": "compiled",
            "model_flops_per_s": 5e14, "peak_datasheet_flops": 989.4e12,
            "mfu_datasheet": 5e14 / 989.4e12, "matmul_flops_per_s": 7.9e14,
            "mfu_measured_matmul": 5e14 / 7.9e14,
        },
    }  # fmt: skip
    torch_rec = {
        "status": "ok",
        "result": {
            "step_s": 0.125, "step_min_s": 0.12, "batch": 256, "images_per_s": 2048.0,
            "torch": "2.x", "device": "NVIDIA H200", "flops_flop_counter": 4.8e13,
        },
    }  # fmt: skip
    sections = {"ir50_jax": jax_rec, "ir50_torch": torch_rec, "eval": {"status": "error",
                "error": "RuntimeError: out of memory\nmore"}}  # fmt: skip
    rows = dict((a, (b, c)) for a, b, c in bench.derived_rows(sections))
    assert rows["JAX / PyTorch step time (same computation)"][0] == "0.80"
    mfu, detail = rows["Model FLOPs utilisation (JAX IR50 step)"]
    assert (
        mfu == "50.5 %"
        and "peak used 989.4 TFLOP/s" in detail
        and "torch flop counter 48" in detail
    )
    table = bench.table({"sections": sections})
    assert "| eval | error | RuntimeError: out of memory |" in table
    assert (
        table.index("IR50 train step, PyTorch") < table.index("Model FLOPs") < table.index("| eval")
    )


@pytest.mark.slow
def test_full_smoke_run_isolated_with_flop_cross_checks(tmp_path):
    """Every section, one subprocess each as on the GPU; XLA's FLOP count of the IR step agrees
    with its unoptimised count and with PyTorch's flop counter for the same computation."""
    proc, report, attempted = run_blocked(tmp_path, ["--isolate"])
    assert attempted == []
    secs = report["sections"]
    bench = load_script()
    assert list(secs) == bench.section_names(bench.SMOKE)
    for name, rec in secs.items():
        if name != "ir50_torch":
            assert rec["status"] == "ok", (name, rec)
    check_torch_row(secs["ir50_torch"])
    j = secs["ir50_jax"]["result"]
    assert j["images_per_s"] > 0 and j["flops_compiled"] > 0
    assert j["flops_compiled"] == pytest.approx(j["flops_lowered"], rel=0.2)
    assert 0 < j["mfu_measured_matmul"] and j["mfu_datasheet"] is None  # CPU: no datasheet peak
    if torch_available():
        t = secs["ir50_torch"]["result"]
        assert j["backbone_params"] == t["backbone_params"]  # same architecture
        assert j["flops_compiled"] == pytest.approx(t["flops_flop_counter"], rel=0.2)
        assert "JAX / PyTorch step time" in proc.stdout
    assert "Model FLOPs utilisation" in proc.stdout
