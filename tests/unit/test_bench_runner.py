"""The bench harness without VMs: rows, warm-up, errors, summaries, ratios, JSON, progress, history."""

from __future__ import annotations

import importlib.util
import io
import json
import sys
from pathlib import Path
from types import ModuleType

import pytest

from lightvm.bench import runner
from lightvm.bench.runner import Benchmark

ROOT = Path(__file__).resolve().parent.parent.parent


def _history() -> ModuleType:
    spec = importlib.util.spec_from_file_location("ci_history", ROOT / "ci" / "history.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["ci_history"] = module
    spec.loader.exec_module(module)
    return module


def _counter(start: float = 1.0) -> Benchmark:
    calls = iter(range(100))
    return Benchmark("c", lambda: {"ms": start + next(calls)}, warmup=2, iterations=3)


def test_warmup_samples_are_dropped_and_every_measured_sample_kept() -> None:
    calls: list[str] = []
    bench = _counter()
    bench.before = lambda: calls.append("before")
    (result,) = runner.run([bench], runner.Progress(5, io.StringIO()))
    assert calls == ["before"]
    assert result.values() == [3.0, 4.0, 5.0]  # calls 0 and 1 were the warm-up
    assert result.error == ""


def test_a_failing_row_is_recorded_and_the_run_goes_on() -> None:
    def boom() -> dict[str, float]:
        raise RuntimeError("no crun here")

    stream = io.StringIO()
    bad = Benchmark("bad", boom, warmup=0, iterations=2)
    results = runner.run([bad, _counter()], runner.Progress(7, stream))
    assert results[0].error == "RuntimeError: no crun here" and results[0].samples == []
    assert len(results[1].samples) == 3
    assert "bad: FAILED" in stream.getvalue()
    assert "FAILED" in runner.summary_table(results)


def test_summarize_quantiles() -> None:
    s = runner.summarize([float(x) for x in range(1, 12)])  # 1..11
    assert (s["median"], s["min"], s["max"], s["n"]) == (6.0, 1.0, 11.0, 11.0)
    assert s["p10"] == pytest.approx(2.0) and s["p90"] == pytest.approx(10.0)
    assert runner.summarize([]) == {}
    assert runner.summarize([2.0])["stdev"] == 0.0


def test_summary_table_ratios_are_against_the_reference_at_the_same_n() -> None:
    def row(variant: str, n: int, value: float) -> runner.Result:
        return runner.Result(f"boot/{variant}/n={n}", {"variant": variant, "n": n, "kind": variant}, "ms", "ms", 0, 1,
                             [{"ms": value}])  # fmt: skip

    rows = [
        row("lightvm-cold", 1, 10.0),
        row("lightvm-cold", 10, 20.0),
        row("libvirt", 1, 300.0),
        row("libvirt", 10, 100.0),
    ]
    table = runner.summary_table(rows, {"lightvm-cold": "lightvm-cold", "libvirt": "lightvm-cold"})
    lines = {line.split()[0]: line for line in table.splitlines()[1:]}
    assert "30.00x lightvm-cold" in lines["boot/libvirt/n=1"]
    assert "5.00x lightvm-cold" in lines["boot/libvirt/n=10"]
    assert "x " not in lines["boot/lightvm-cold/n=1"]


def test_json_has_metadata_and_every_sample(tmp_path: Path) -> None:
    (result,) = runner.run([_counter()], runner.Progress(5, io.StringIO()))
    meta = runner.metadata("boot", "tcg", {"vms": [1]})
    path = tmp_path / "r" / "results.json"
    runner.write_json(path, meta, [result], {"plots": []})
    doc = json.loads(path.read_text())
    for key in ("git_describe", "hostname", "cpu_model", "nproc", "accel", "qemu_version", "kernel", "timestamp"):
        assert key in doc["meta"]
    assert doc["meta"]["options"] == {"vms": [1]}
    (bench,) = doc["benchmarks"]
    assert [s["ms"] for s in bench["samples"]] == [3.0, 4.0, 5.0]
    assert bench["summary"]["ms"]["median"] == 4.0
    assert not list(path.parent.glob("*.tmp"))


def test_progress_without_a_terminal_prints_one_line_per_row() -> None:
    stream = io.StringIO()
    bar = runner.Progress(4, stream)
    for label in ("a", "a", "b", "b"):
        bar.step(label)
    bar.close()
    lines = stream.getvalue().splitlines()
    assert len(lines) == 3 and "1/4" in lines[0] and "3/4" in lines[1]
    assert lines[-1].startswith("[####") and "4/4" in lines[-1] and lines[-1].endswith("done")


def test_history_append_and_report(tmp_path: Path) -> None:
    history = _history()
    (result,) = runner.run([_counter()], runner.Progress(5, io.StringIO()))
    run_dir = tmp_path / "B-boot"
    runner.write_json(run_dir / "results.json", runner.metadata("boot", "tcg"), [result],
                      {"plots": ["boot.svg"], "summary_table": "c 4.0 ms"})  # fmt: skip
    (run_dir / "boot.svg").write_text("<svg xmlns='http://www.w3.org/2000/svg'/>")
    hist = tmp_path / "history.jsonl"
    assert history.main(["append", str(hist), str(run_dir / "results.json")]) == 0
    assert history.main(["append", str(hist), str(run_dir / "results.json")]) == 0
    with hist.open("a") as f:
        f.write('{"torn": ')  # a killed writer's half line is ignored
    entries = history.load(hist)
    assert len(entries) == 2 and entries[0]["benchmarks"]["c"]["median"] == 4.0
    ab = tmp_path / "ab-boot.txt"
    ab.write_text("c ms 1 2 2.0 0.001 regression <<<\n")
    assert history.main(["report", str(hist), str(tmp_path / "report"), "--run", str(run_dir), "--ab", str(ab)]) == 0
    page = (tmp_path / "report" / "index.html").read_text()
    assert "B-boot/boot.svg" in page and (tmp_path / "report" / "B-boot" / "boot.svg").exists()
    assert "class='bad'" in page and "<td>4.000</td>" in page


def test_metadata_records_package_and_program_versions() -> None:
    meta = runner.metadata("boot", "tcg")
    assert set(meta["packages"]) == set(runner.PACKAGES)
    assert meta["packages"]["lightvm"]  # this checkout is installed in the venv
    assert set(meta["programs"]) == {"libvirtd", "crun"}
    assert all(v is None or isinstance(v, str) for v in meta["programs"].values())
    assert meta["qemu_binary"]


def test_absent_packages_and_programs_are_null_not_errors(tmp_path: Path) -> None:
    assert runner.package_versions(["no-such-distribution-xyz"]) == {"no-such-distribution-xyz": None}
    failing = tmp_path / "failing"
    failing.write_text("#!/bin/sh\nexit 3\n")
    failing.chmod(0o755)
    talking = tmp_path / "talking"
    talking.write_text("#!/bin/sh\necho 'talking version 1.2'\necho second line\n")
    talking.chmod(0o755)
    got = runner.program_versions(
        {
            "absent": ["no-such-program-xyz", "--version"],
            "failing": [str(failing), "--version"],
            "talking": [str(talking), "--version"],
        }
    )
    assert got == {"absent": None, "failing": None, "talking": "talking version 1.2"}


def test_a_program_that_hangs_times_out_to_null(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    hanging = tmp_path / "hanging"
    hanging.write_text("#!/bin/sh\nexec sleep 30\n")
    hanging.chmod(0o755)
    monkeypatch.setattr(runner, "VERSION_TIMEOUT_S", 0.2)
    assert runner.program_versions({"hanging": [str(hanging), "--version"]}) == {"hanging": None}
