"""Summarise an Autobahn|Testsuite fuzzingclient report and fail if any case failed.

    python tests/autobahn/summary.py tests/.work/autobahn/reports/servers/index.json

Reads the index.json that `wstest -m fuzzingclient` writes, prints how many cases ended with
each behavior (OK, NON-STRICT, INFORMATIONAL, UNIMPLEMENTED, FAILED) and each closing behavior,
then lists every failed case with Autobahn's explanation (from the case's own JSON report).

Exit status: 0 when no case failed, 1 when a case failed, 2 when the report is missing, empty,
or has no results for the agent asked for. A case counts as failed when its behavior is
FAILED (or anything not in the passing set), or when its closing behavior is FAILED or UNCLEAN
(Autobahn's report marks both red); `--ignore-close` counts the behavior alone.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path

BEHAVIORS = ["OK", "NON-STRICT", "INFORMATIONAL", "UNIMPLEMENTED", "FAILED"]
PASSING = {"OK", "NON-STRICT", "INFORMATIONAL", "UNIMPLEMENTED"}
CLOSE_BEHAVIORS = ["OK", "INFORMATIONAL", "WRONG CODE", "FAILED BY CLIENT", "UNCLEAN", "FAILED"]
CLOSE_FAILING = {"FAILED", "UNCLEAN"}


def case_key(case_id: str) -> tuple:
    """'9.1.10' sorts after '9.1.2'."""
    return tuple(int(part) if part.isdigit() else part for part in case_id.split("."))


def load_case_report(outdir: Path, entry: dict) -> dict:
    name = entry.get("reportfile")
    if not name:
        return {}
    try:
        return json.loads((outdir / name).read_text())
    except (OSError, ValueError):
        return {}


def summarise(index_path: Path, agent: str | None, ignore_close: bool, show: int) -> int:
    try:
        index = json.loads(index_path.read_text())
    except (OSError, ValueError) as error:
        print(f"cannot read the Autobahn report {index_path}: {error}", file=sys.stderr)
        return 2
    if not index:
        print(f"{index_path} has no results", file=sys.stderr)
        return 2
    agents = [agent] if agent else sorted(index)
    status = 0
    for name in agents:
        cases = index.get(name)
        if not cases:
            print(f"{index_path} has no results for agent {name!r} (has: {', '.join(index)})")
            status = max(status, 2)
            continue
        status = max(status, summarise_agent(index_path.parent, name, cases, ignore_close, show))
    return status


def summarise_agent(outdir: Path, agent: str, cases: dict, ignore_close: bool, show: int) -> int:
    behavior = Counter(entry.get("behavior", "?") for entry in cases.values())
    closing = Counter(entry.get("behaviorClose", "?") for entry in cases.values())

    failed = []
    for case_id in sorted(cases, key=case_key):
        entry = cases[case_id]
        bad_behavior = entry.get("behavior") not in PASSING
        bad_close = not ignore_close and entry.get("behaviorClose") in CLOSE_FAILING
        if bad_behavior or bad_close:
            failed.append(case_id)

    print(f"Autobahn|Testsuite fuzzingclient results for {agent}: {len(cases)} cases")
    print()
    print(f"  {'behavior':<18}{'cases':>7}     {'closing behavior':<18}{'cases':>7}")
    left = BEHAVIORS + sorted(set(behavior) - set(BEHAVIORS))
    right = CLOSE_BEHAVIORS + sorted(set(closing) - set(CLOSE_BEHAVIORS))
    for row in range(max(len(left), len(right))):
        cells = ""
        if row < len(left):
            cells += f"  {left[row]:<18}{behavior.get(left[row], 0):>7}"
        else:
            cells += " " * 27
        if row < len(right):
            cells += f"     {right[row]:<18}{closing.get(right[row], 0):>7}"
        print(cells.rstrip())
    print()

    by_section = Counter(case_id.split(".")[0] for case_id in cases)
    sections = sorted(by_section, key=case_key)
    print("  cases per section: " + ", ".join(f"{s}.*: {by_section[s]}" for s in sections))

    for name in ("NON-STRICT", "INFORMATIONAL", "UNIMPLEMENTED"):
        ids = [c for c in sorted(cases, key=case_key) if cases[c].get("behavior") == name]
        if ids:
            print(f"  {name.lower()}: {', '.join(ids)}")

    if not failed:
        print(f"  PASS: no failed case ({agent})")
        return 0
    print(f"  FAIL: {len(failed)} failed case(s) ({agent}):")
    for case_id in failed[:show]:
        entry = cases[case_id]
        report = load_case_report(outdir, entry)
        print(
            f"    {case_id}: behavior {entry.get('behavior')}, closing "
            f"{entry.get('behaviorClose')}, remote close code {entry.get('remoteCloseCode')}"
        )
        for key in ("description", "result", "resultClose"):
            text = " ".join(str(report.get(key, "")).split())
            if text:
                print(f"        {key}: {text[:300]}")
        if entry.get("reportfile"):
            print(f"        report: {outdir / entry['reportfile']}")
    if len(failed) > show:
        print(f"    ... and {len(failed) - show} more: {', '.join(failed[show:])}")
    return 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("index", type=Path, help="reports/servers/index.json written by wstest")
    parser.add_argument("--agent", help="only this agent (default: every agent in the report)")
    parser.add_argument(
        "--ignore-close",
        action="store_true",
        help="judge cases by their behavior only, not their closing behavior",
    )
    parser.add_argument("--show", type=int, default=30, help="failed cases to detail (30)")
    args = parser.parse_args(argv)
    return summarise(args.index, args.agent, args.ignore_close, args.show)


if __name__ == "__main__":
    sys.exit(main())
