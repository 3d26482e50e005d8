"""`lightvm bench` refuses an option that the chosen suite would ignore (lightvm/bench/cli.py, ONLY_FOR)."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from lightvm.bench import cli
from lightvm.errors import LightVMError


def _args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="lightvm")
    cli.register(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(["bench", *argv])


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (("density", "--order", "variant"), "--order: only the boot suite reads it, not density"),
        (("tinyx", "--settle", "0"), "--settle: only the boot and template suites read it, not tinyx"),
        (("split", "--baselines", "crun"), "--baselines: only the boot and density suites read it"),
        (("boot", "--net", "user"), "--net: only the splitnic suite reads it, not boot"),
        (("burst", "--disk"), "--disk: only the splitnic suite reads it, not burst"),
        (("splitnic", "--creates", "5"), "--creates: only the burst suite reads it, not splitnic"),
        (("boot", "--memory-mib", "64"), "--memory-mib: only the checkpoint suite reads it"),
        (("checkpoint", "--stock-iterations", "2"), "--stock-iterations: only the tinyx suite reads it"),
        (("boot", "--idle-window", "5"), "--idle-window: only the density and split and tinyx suites read it"),
    ],
)
def test_an_option_the_suite_does_not_read_is_refused(argv: tuple[str, ...], message: str) -> None:
    with pytest.raises(LightVMError, match=message):
        cli.refuse_foreign_options(_args(*argv))


@pytest.mark.parametrize(
    "argv",
    [
        ("boot", "--order", "variant", "--settle", "0", "--baselines", "none"),
        ("template", "--settle", "0"),
        ("density", "--baselines", "crun", "--idle-window", "5"),
        ("tinyx", "--idle-window", "5", "--stock-iterations", "1"),
        ("checkpoint", "--memory-mib", "64"),
        ("burst", "--creates", "5", "--initial-pool", "0", "--clients", "2", "--pool-idle", "0"),
        ("splitnic", "--net", "user"),
        ("splitnic", "--disk"),
        ("net",),
    ],
)
def test_options_the_suite_reads_pass(argv: tuple[str, ...]) -> None:
    cli.refuse_foreign_options(_args(*argv))  # raises nothing


def test_every_refused_option_is_a_real_one() -> None:
    defaults = vars(_args("boot"))
    assert set(cli.ONLY_FOR) <= set(defaults)
    # Not given reads as None (or False for a switch): what the check takes for "left out".
    assert all(defaults[dest] in (None, False) for dest in cli.ONLY_FOR)


def test_plots_without_matplotlib_are_skipped_with_the_extra_named(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An installed wheel without the ``bench`` extra: the numbers are written and stderr
    says which package and extra the plots need (not "plots failed")."""

    class Suite:
        REFERENCE = "none"

        @staticmethod
        def benchmarks(opts: object, stack: object) -> list[object]:
            return []

        @staticmethod
        def describe() -> str:
            return "a suite with no rows"

        @staticmethod
        def plot(results: object, out: Path, subtitle: str) -> list[Path]:
            raise ModuleNotFoundError("No module named 'matplotlib'", name="matplotlib")

    monkeypatch.setattr(cli.suite, "load", lambda name: Suite)
    path, results = cli.run_suite("fake", cli.suite.SuiteOptions(accel="tcg"), tmp_path)
    assert path.is_file() and results == []
    err = capsys.readouterr().err
    assert "plots skipped: matplotlib is not installed (pip install 'lightvm[bench]')" in err
    assert "plots failed" not in err
