"""ci/ab_compare.py on synthetic results: medians, ratio, permutation p-value, verdicts, exit status."""

from __future__ import annotations

import importlib.util
import json
import random
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent.parent


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("ab_compare", ROOT / "ci" / "ab_compare.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["ab_compare"] = module  # dataclasses look the module up by name
    spec.loader.exec_module(module)
    return module


ab = _load()


def doc(rows: dict[str, list[float]], describe: str = "v1") -> dict[str, Any]:
    return {
        "schema": 1,
        "meta": {"git_describe": describe, "suite": "boot", "accel": "tcg"},
        "benchmarks": [
            {
                "name": name,
                "metric": "ms",
                "unit": "ms",
                "error": "",
                "samples": [{"ms": v, "qemu_up": v / 2} for v in values],
            }
            for name, values in rows.items()
        ],
    }


def noisy(center: float, n: int, seed: int, spread: float = 0.02) -> list[float]:
    rng = random.Random(seed)
    return [center * (1 + rng.uniform(-spread, spread)) for _ in range(n)]


def test_exact_permutation_p_value_of_a_complete_separation() -> None:
    # 20 splits of 6 values into 3+3; the medians differ by 3 for {1,2,3}|{4,5,6},
    # {1,2,4}|{3,5,6} and their two mirror images: p = 4/20.
    assert ab.permutation_test([1.0, 2.0, 3.0], [4.0, 5.0, 6.0]) == pytest.approx(4 / 20)


def test_identical_samples_give_p_one() -> None:
    assert ab.permutation_test([1.0] * 5, [1.0] * 5) == 1.0


def test_monte_carlo_path_is_seeded_and_small_for_a_clear_shift() -> None:
    a, b = noisy(10, 30, 1), noisy(15, 30, 2)
    p1, p2 = ab.permutation_test(a, b), ab.permutation_test(a, b)
    assert p1 == p2  # deterministic
    assert 0 < p1 < 0.001


def test_a_clear_slowdown_is_a_regression() -> None:
    (c, *_rest) = ab.compare(doc({"boot/x/n=1": noisy(10, 10, 1)}), doc({"boot/x/n=1": noisy(15, 10, 2)}))
    assert c.metric == "ms"  # the primary metric comes first
    assert c.verdict == "regression"
    assert c.ratio == pytest.approx(1.5, rel=0.05)
    assert c.p_value < 0.01


def test_a_clear_speedup_is_an_improvement() -> None:
    (c, *_rest) = ab.compare(doc({"b": noisy(10, 10, 1)}), doc({"b": noisy(5, 10, 2)}))
    assert c.verdict == "improvement"
    assert c.ratio == pytest.approx(0.5, rel=0.05)


def test_same_distribution_is_no_change() -> None:
    (c, *_rest) = ab.compare(doc({"b": noisy(10, 10, 1)}), doc({"b": noisy(10, 10, 2)}))
    assert c.verdict == "no change"


def test_a_significant_but_tiny_change_is_not_flagged() -> None:
    a = [10.0 + i * 1e-4 for i in range(12)]
    b = [10.1 + i * 1e-4 for i in range(12)]  # +1%: below the 5% threshold
    (c, *_rest) = ab.compare(doc({"b": a}), doc({"b": b}))
    assert c.p_value < 0.01
    assert c.verdict == "no change"


def test_too_few_samples_and_missing_or_failed_rows() -> None:
    a = doc({"one": [1.0], "only-a": [1.0, 2.0], "failed": [1.0, 2.0]})
    b = doc({"one": [2.0], "only-b": [1.0, 2.0], "failed": [1.0, 2.0]})
    b["benchmarks"][2]["error"] = "LightVMError: boom"
    comparisons = ab.compare(a, b)
    assert {c.benchmark for c in comparisons} == {"one"}
    assert all(c.verdict == "insufficient data" for c in comparisons)


def test_main_exit_status_and_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pa, pb, out = tmp_path / "a.json", tmp_path / "b.json", tmp_path / "ab.json"
    pa.write_text(json.dumps(doc({"b": noisy(10, 10, 1)}, "old")))
    pb.write_text(json.dumps(doc({"b": noisy(20, 10, 2)}, "new")))
    assert ab.main([str(pa), str(pb), "--json", str(out)]) == 1
    text = capsys.readouterr().out
    assert "old" in text and "new" in text and "regression" in text
    data = json.loads(out.read_text())
    assert {c["metric"] for c in data["comparisons"]} == {"ms", "qemu_up"}
    assert ab.main([str(pb), str(pa)]) == 0  # the other way round it is an improvement
    assert ab.main([str(pa), str(tmp_path / "missing.json")]) == 2


def test_a_qemu_or_accel_mismatch_is_refused_naming_both_values(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    a, b = doc({"b": noisy(10, 10, 1)}, "old"), doc({"b": noisy(10, 10, 2)}, "new")
    a["meta"]["qemu_version"] = "QEMU emulator version 7.2.22 (Debian 1:7.2+dfsg-7+deb12u18+b3)"
    b["meta"]["qemu_version"] = "QEMU emulator version 7.2.22 (lightvm slim, Debian 1:7.2+dfsg-7+deb12u18)"
    pa, pb = tmp_path / "a.json", tmp_path / "b.json"
    pa.write_text(json.dumps(a))
    pb.write_text(json.dumps(b))
    assert ab.main([str(pa), str(pb)]) == 2
    captured = capsys.readouterr()
    assert "qemu_version" in captured.err and "lightvm slim" in captured.err and "+b3" in captured.err
    assert "refusing" in captured.err and "median" not in captured.out  # nothing compared
    assert ab.main([str(pa), str(pb), "--allow-mismatch"]) == 0
    captured = capsys.readouterr()
    assert "warning" in captured.err and "qemu_version" in captured.err and "old" in captured.out
    b["meta"]["qemu_version"] = a["meta"]["qemu_version"]
    b["meta"]["accel"] = "kvm"
    pb.write_text(json.dumps(b))
    assert ab.main([str(pa), str(pb)]) == 2
    assert "accel: A 'tcg' != B 'kvm'" in capsys.readouterr().err


def test_matching_meta_has_no_mismatch() -> None:
    a, b = doc({"b": [1.0, 2.0]}), doc({"b": [1.0, 2.0]})
    for d in (a, b):
        d["meta"]["qemu_version"] = "QEMU 7.2"
    assert ab.mismatches(a, b) == []
    b["meta"].pop("qemu_version")
    assert ab.mismatches(a, b) == ["qemu_version: A 'QEMU 7.2' != B None"]
