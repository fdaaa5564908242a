#!/usr/bin/env python3
"""Fail a CI run whose pytest reports skip or xfail a test the allow-list does not name.

This script owns the verdict on skipped and expected-to-fail tests: it reads
the JUnit XML reports pytest wrote (`--junitxml=FILE -o junit_family=xunit1`,
one per pytest run), prints every skipped or xfailed test with its reason, and
exits 1 when one of them matches no entry of the allow-list (tests/skips.toml;
its format is in README.md, "Test"). It also exits 1 when a report is missing,
unreadable or holds no test at all, so that a crashed or empty run is never
green. It must stay standard-library only (it runs before and without the
test extras) and must not decide anything else about the run: failures and
errors are pytest's exit status, which .ci/run checks itself.

    check_skips.py ALLOWLIST.toml REPORT.xml [REPORT.xml...]
"""

from __future__ import annotations

import ast
import re
import sys
import tomllib
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Allowed:
    """One allow-list entry: which tests may skip, with which reason, and why."""

    test: str
    reason: str
    why: str

    def matches(self, nodeid: str, reason: str) -> bool:
        return bool(_glob(self.test).fullmatch(nodeid) and _glob(self.reason).fullmatch(reason))


@dataclass(frozen=True)
class Skip:
    """A test the run did not pass or fail: skipped, or xfailed."""

    nodeid: str
    kind: str  # "skip" or "xfail"
    reason: str


def _glob(pattern: str) -> re.Pattern[str]:
    # Only `*` is special: node ids are full of `[`, `]` and `.` (parameters,
    # file names) that fnmatch or a regex would read as syntax.
    return re.compile(".*".join(re.escape(part) for part in pattern.split("*")), re.DOTALL)


def load_allowlist(path: Path) -> list[Allowed]:
    """The entries of the TOML allow-list; a malformed entry is an error, not ignored."""
    data = tomllib.loads(path.read_text())
    unknown = set(data) - {"skip"}
    if unknown:
        raise ValueError(f"{path}: unknown top-level keys {sorted(unknown)} (only [[skip]])")
    entries = []
    for i, entry in enumerate(data.get("skip", []), 1):
        keys = set(entry)
        if keys != {"test", "reason", "why"} or not all(
            isinstance(v, str) and v.strip() for v in entry.values()
        ):
            raise ValueError(
                f"{path}: entry {i} must have exactly the non-empty strings test, reason, why"
            )
        entries.append(Allowed(entry["test"], entry["reason"], entry["why"]))
    return entries


def _nodeid(case: ET.Element) -> str:
    """The pytest node id of a <testcase> written with junit_family=xunit1."""
    file = case.get("file", "")
    classname = case.get("classname", "")
    name = case.get("name", "")
    if not classname:  # a module skipped at collection: name is its dotted path
        return file or name
    module = file.removesuffix(".py").replace("/", ".")
    if file and classname == module:
        return f"{file}::{name}"
    if file and classname.startswith(module + "."):
        classes = classname[len(module) + 1:].split(".")
        return "::".join([file, *classes, name])
    return f"{classname}::{name}"  # no file attribute: xunit2, a less exact id


def _collection_reason(text: str) -> str:
    # A collection skip's text is str(longrepr): the tuple (path, line, "Skipped: why").
    try:
        longrepr = ast.literal_eval(text)
        return str(longrepr[2]).removeprefix("Skipped: ")
    except (ValueError, SyntaxError, IndexError, TypeError):
        return text


def read_report(path: Path) -> tuple[int, list[Skip]]:
    """How many test cases a JUnit report holds, and those skipped or xfailed."""
    root = ET.parse(path).getroot()
    cases = list(root.iter("testcase"))
    skips = []
    for case in cases:
        for skipped in case.findall("skipped"):
            kind = "xfail" if skipped.get("type") == "pytest.xfail" else "skip"
            reason = skipped.get("message", "")
            if reason == "collection skipped":
                reason = _collection_reason(skipped.text or "")
            skips.append(Skip(_nodeid(case), kind, reason))
    return len(cases), skips


def main(argv: list[str]) -> int:
    if len(argv) < 3:
        print(__doc__.strip().splitlines()[-1].strip(), file=sys.stderr)
        return 2
    allowlist_path, reports = Path(argv[1]), [Path(p) for p in argv[2:]]
    try:
        allowed = load_allowlist(allowlist_path)
    except (OSError, ValueError) as e:  # tomllib.TOMLDecodeError is a ValueError
        print(f"check_skips: cannot read the allow-list: {e}", file=sys.stderr)
        return 1

    ok = True
    skips: list[Skip] = []
    for report in reports:
        try:
            count, found = read_report(report)
        except (OSError, ET.ParseError) as e:
            print(f"check_skips: {report}: no usable report ({e}): did pytest run?")
            ok = False
            continue
        if count == 0:
            print(f"check_skips: {report}: no test ran")
            ok = False
        skips += found

    used: set[Allowed] = set()
    bad = 0
    for skip in skips:
        entry = next((a for a in allowed if a.matches(skip.nodeid, skip.reason)), None)
        if entry is None:
            bad += 1
            print(f"NOT ALLOWED {skip.kind} {skip.nodeid}: {skip.reason}")
        else:
            used.add(entry)
            print(f"allowed     {skip.kind} {skip.nodeid}: {skip.reason}")
    for entry in allowed:
        if entry not in used:  # not an error: another machine may need it
            print(f"unused allow-list entry: {entry.test} ({entry.reason})")

    print(f"check_skips: {len(skips)} skipped or xfailed, {bad} not allowed by {allowlist_path}")
    if bad:
        print(
            "check_skips: FAILED: install what those tests need, fix them, or add an "
            f"entry to {allowlist_path} saying why the skip is acceptable"
        )
    if not ok or bad:
        print("check_skips: FAILED")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
