"""The benchmarks' command line (``python -m bench``): shared options, typos refused before anything runs. The
benchmarks themselves are timed by ``make bench``, never here."""

from __future__ import annotations

import importlib

import pytest

from bench.__main__ import BENCHMARKS, main


@pytest.mark.parametrize("name", sorted(BENCHMARKS))
def test_every_benchmark_takes_the_shared_options_and_refuses_a_typo(name, capsys):
    parser = importlib.import_module(BENCHMARKS[name]).build_parser()
    args = parser.parse_args(["--threads", "1", "--json", "out.json"])
    assert (args.threads, args.json) == (1, "out.json")
    with pytest.raises(SystemExit):
        parser.parse_args(["--treads", "1"])
    assert "unrecognized arguments: --treads" in capsys.readouterr().err


def test_options_are_checked_by_every_named_benchmark_before_the_first_runs(capsys):
    with pytest.raises(SystemExit):
        main(["noise", "metrics", "--qubits", "4"])  # --qubits is an option of noise, not of metrics
    captured = capsys.readouterr()
    assert "python -m bench metrics: error: unrecognized arguments: --qubits 4" in captured.err
    assert "== bench" not in captured.out  # nothing ran
    with pytest.raises(SystemExit, match="--json names one file"):
        main(["noise", "metrics", "--json", "out.json"])
    with pytest.raises(SystemExit, match=r"unknown benchmark\(s\) \['nosie'\]; allowed: \['quantum'"):
        main(["nosie"])
