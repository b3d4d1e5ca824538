"""JUnit XML for `qcal check`: one test case per rule x precision x condition, or one error case when the input
was unusable (exit 2), so a CI job's test-report step always has a file to show and it always parses.

Names and messages come from the report (condition and precision names are the user's): every character XML 1.0
forbids (C0 controls but tab/newline/CR, lone surrogates, U+FFFE/U+FFFF) is written as a visible `\\xNN` /
`\\uNNNN` escape instead, since ElementTree would write it raw and every XML parser would refuse the file.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from collections.abc import Iterable
from typing import Protocol

# Characters outside XML 1.0's Char production: #x9 | #xA | #xD | [#x20-#xD7FF] | [#xE000-#xFFFD] | [#x10000-]
_FORBIDDEN = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")


def _escape(m: re.Match[str]) -> str:
    c = ord(m.group())
    return f"\\x{c:02x}" if c < 0x100 else f"\\u{c:04x}"


def xml_safe(s: str) -> str:
    """`s` with every character XML 1.0 forbids replaced by its backslash escape (the rest as is)."""
    return _FORBIDDEN.sub(_escape, s)


class JunitCase(Protocol):   # qcal.gate.check.Case (read-only fields)
    @property
    def rule(self) -> str: ...
    @property
    def precision(self) -> str: ...
    @property
    def condition(self) -> str: ...
    @property
    def ok(self) -> bool: ...
    @property
    def message(self) -> str: ...


def _document(suite: ET.Element) -> str:
    root = ET.Element("testsuites")
    root.append(suite)
    ET.indent(root)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"


def junit_xml(cases: Iterable[JunitCase]) -> str:
    cases = list(cases)
    failed = sum(not c.ok for c in cases)
    suite = ET.Element("testsuite", name="qcal.check", tests=str(len(cases)), failures=str(failed), errors="0")
    for c in cases:
        tc = ET.SubElement(suite, "testcase", classname=xml_safe(f"qcal.check.{c.rule}"),
                           name=xml_safe(f"{c.precision}/{c.condition}"))
        msg = xml_safe(c.message)
        if c.ok:
            ET.SubElement(tc, "system-out").text = msg
        else:
            ET.SubElement(tc, "failure", message=msg, type=xml_safe(c.rule)).text = msg
    return _document(suite)


def junit_error_xml(problem: str, source: str = "") -> str:
    """The file written on exit 2: one test case in error, saying the input was unusable and why."""
    msg = xml_safe(f"qcal check could not gate: the input is unusable: {problem}")
    suite = ET.Element("testsuite", name="qcal.check", tests="1", failures="0", errors="1")
    tc = ET.SubElement(suite, "testcase", classname="qcal.check.input", name=xml_safe(source or "input"))
    ET.SubElement(tc, "error", message=msg, type="unusable-input").text = msg
    return _document(suite)
