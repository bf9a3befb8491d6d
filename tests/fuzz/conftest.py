"""Prints the fuzz totals (harness.TALLIES) at the end of the session: cases, answers, typed errors, hangs, wrong."""

from __future__ import annotations

from .harness import TALLIES


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    if not TALLIES:
        return
    terminalreporter.section("fuzz totals")
    total = [0, 0, 0, 0, 0]
    for suite, t in sorted(TALLIES.items()):
        row = [t.cases, t.answers, t.typed, len(t.hangs), len(t.wrong)]
        total = [a + b for a, b in zip(total, row, strict=True)]
        terminalreporter.write_line(
            f"{suite:<24} cases {row[0]:>5}  answers {row[1]:>5}  typed errors {row[2]:>5}  hangs {row[3]}  "
            f"wrong types {row[4]}"
        )
    terminalreporter.write_line(
        f"{'all':<24} cases {total[0]:>5}  answers {total[1]:>5}  typed errors {total[2]:>5}  hangs {total[3]}  "
        f"wrong types {total[4]}"
    )
