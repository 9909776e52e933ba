"""The reports of a run: a terminal table, JUnit XML for CI systems, a self-contained HTML page
to hand over, and ``results.json`` for programs.

Everything a report shows of a SIP message came from the network: it is escaped for the format
it lands in (HTML text and attributes, XML text without the characters XML 1.0 forbids), never
trusted. The HTML page loads nothing from anywhere (inline CSS and script, a Content Security
Policy that forbids anything else, with a nonce so no injected script could run either).
"""

from __future__ import annotations

import json
import re
import secrets
import socket
import unicodedata
from html import escape
from pathlib import Path
from typing import Any

from lxml import etree

from conformance.suite.operator import NO_OPERATOR
from conformance.suite.runner import VERDICTS, CaseResult, RunResult
from conformance.suite.trace import TraceEntry

TOOL = "gb28181-conformance"
JUNIT_FILE = "junit.xml"
HTML_FILE = "report.html"
JSON_FILE = "results.json"
# More messages than this in one case are counted in the HTML report, not shown (results.json
# keeps them all).
HTML_TRACE_LIMIT = 2000


def write_reports(run: RunResult, directory: Path) -> dict[str, Path]:
    """Write ``junit.xml``, ``report.html`` and ``results.json`` into ``directory`` (made if
    missing); return their paths by kind."""
    directory.mkdir(parents=True, exist_ok=True)
    paths = {
        "junit": directory / JUNIT_FILE,
        "html": directory / HTML_FILE,
        "json": directory / JSON_FILE,
    }
    paths["junit"].write_bytes(junit_xml(run))
    paths["html"].write_text(html_report(run), encoding="utf-8")
    paths["json"].write_text(
        json.dumps(results_dict(run), ensure_ascii=False, indent=1) + "\n", encoding="utf-8"
    )
    return paths


# -- shared pieces -------------------------------------------------------------------------------
def target_text(run: RunResult) -> str:
    o = run.options
    return f"{o.target_host}:{o.target_port}/{o.transport}"


def totals_text(run: RunResult) -> str:
    counts = run.counts()
    parts = ", ".join(f"{counts[v]} {v}" for v in VERDICTS)
    return f"{parts} ({len(run.results)} cases, {run.duration:.1f} s)"


def clause_text(clause: str) -> str:
    return f"§{clause}" if clause else "-"


def _trace_lines(entries: list[TraceEntry], since: float) -> str:
    return "\n".join(e.describe(since) for e in entries)


# -- terminal ------------------------------------------------------------------------------------
def _width(text: str) -> int:
    return sum(2 if unicodedata.east_asian_width(ch) in "WF" else 1 for ch in text)


def _printable(text: str, newline: str = " ") -> str:
    """Text from the network made safe for a terminal: control characters (escape sequences)
    become ``\\xNN``; line breaks become ``newline``."""
    lines = text.split("\n")
    return newline.join(
        "".join(ch if ch.isprintable() else f"\\x{ord(ch):02x}" for ch in line) for line in lines
    )


def _fit(text: str, width: int, right: bool = False) -> str:
    """``text`` cut (with …) or padded to ``width`` terminal columns."""
    text = _printable(" ".join(text.split()))
    if _width(text) > width:
        out, used = [], 0
        for ch in text:
            w = _width(ch)
            if used + w > width - 1:
                break
            out.append(ch)
            used += w
        text = "".join(out) + "…"
    pad = " " * (width - _width(text))
    return pad + text if right else text + pad


def summary_table(run: RunResult, *, title_width: int = 48, note_width: int = 60) -> str:
    """The table the CLI prints: ID, grade, title, verdict, seconds, and a short note; the
    totals; then each failure's and error's details."""
    lines: list[str] = []
    if run.run_error:
        lines += [f"RUN ERROR: {run.run_error}", ""]
    results = run.results
    id_w = max([len("ID"), *(len(r.info.id) for r in results)])
    header = (
        f"{_fit('ID', id_w)}  {_fit('Grade', 5)}  {_fit('Title', title_width)}  "
        f"{_fit('Verdict', 7)}  {_fit('Seconds', 7, right=True)}  Note"
    )
    lines += [header, "-" * (len(header) + note_width - 4)]
    for r in results:
        note = _fit(r.reason, note_width).rstrip() if r.verdict != "pass" else ""
        lines.append(
            f"{_fit(r.info.id, id_w)}  {_fit(r.info.grade, 5)}  "
            f"{_fit(r.info.title, title_width)}  {_fit(r.verdict, 7)}  "
            f"{_fit(f'{r.duration:.2f}', 7, right=True)}  {note}".rstrip()
        )
    lines += ["", f"Totals: {totals_text(run)}"]
    lines += _state_lines(run)
    bad = [r for r in results if r.verdict in ("fail", "error") and not run.run_error]
    if bad:
        lines += ["", "Failures and errors:"]
        for r in bad:
            lines.append(f"  {r.info.id} {r.verdict}: {_printable(r.reason)}")
            if r.expected is not None:
                lines.append("    expected: " + _printable(r.expected, "\n              "))
            if r.seen is not None:
                lines.append("    seen:     " + _printable(r.seen, "\n              "))
    lines += findings_lines(run)
    if run.interrupted:
        lines += ["", "The run was interrupted."]
    return "\n".join(lines)


def _state_lines(run: RunResult) -> list[str]:
    """What cases left the target in, for the terminal: each state the runner had to put back
    and whether it could, and how many cases were not run because it could not."""
    notes = [n for n in run.state_log if n.problems]
    if not notes:
        return []
    lines = ["", "Left out of place by cases (and put back by the runner before the next):"]
    lines += [f"  {_printable(n.describe())}" for n in notes]
    blocked = [r for r in run.results if r.blocked_by]
    if blocked:
        by = ", ".join(dict.fromkeys(r.blocked_by for r in blocked))
        lines.append(
            f"  {len(blocked)} later cases were not run: the state {by} left could not be restored"
        )
    return lines


def findings_lines(run: RunResult) -> list[str]:
    """The quirks the target showed, for the text summary (nothing when it showed none)."""
    if not run.findings:
        return []
    lines = ["", "Findings (quirks of real equipment the target shows; not verdicts):"]
    for f in run.findings:
        where = f" during {f.case}" if f.case else ""
        times = f" ({f.count} times)" if f.count > 1 else ""
        lines.append(f"  [{f.side}] {f.quirk}{times}{where}: {_printable(f.detail)}")
    return lines


# -- JUnit XML -----------------------------------------------------------------------------------
# Characters XML 1.0 cannot carry at all, even escaped.
_NOT_XML = re.compile("[^\x09\x0a\x0d\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


def _xml(text: str, limit: int | None = None) -> str:
    text = _NOT_XML.sub(lambda m: f"\\x{ord(m.group()):02x}", text)
    if limit is not None and len(text) > limit:
        text = text[: limit - 1] + "…"
    return text


def _junit_body(r: CaseResult) -> str:
    parts = [r.reason]
    if r.expected is not None:
        parts.append(f"expected: {r.expected}")
    if r.seen is not None:
        parts.append(f"seen:     {r.seen}")
    if r.traceback:
        parts.append(r.traceback.rstrip())
    involved = r.messages or r.trace[-20:]
    if involved:
        parts.append("SIP messages involved:")
        for e in involved:
            body = e.text.rstrip().replace("\n", "\n    ")
            parts.append(f"  {e.describe(r.started)}\n    {body}")
    return "\n".join(parts)


def junit_xml(run: RunResult) -> bytes:
    """One ``<testsuite>`` in ``<testsuites>``; a ``<testcase>`` per case (classname: the grade;
    name: ID and title) with ``<failure>``, ``<skipped>`` or ``<error>``."""
    counts = run.counts()
    o = run.options
    totals = {
        "tests": str(len(run.results)),
        "failures": str(counts["fail"]),
        "errors": str(counts["error"]),
        "skipped": str(counts["skip"]),
        "time": f"{run.duration:.3f}",
    }
    root = etree.Element("testsuites", name=TOOL, **totals)
    suite = etree.SubElement(
        root,
        "testsuite",
        name=f"{TOOL}.{o.target_role}.{o.edition}",
        timestamp=run.started_at.replace(tzinfo=None).isoformat(timespec="seconds"),
        hostname=_xml(socket.gethostname()),
        **totals,
    )
    props = etree.SubElement(suite, "properties")
    for name, value in run.options.public().items():
        text = ",".join(map(str, value)) if isinstance(value, list) else str(value)
        etree.SubElement(props, "property", name=name, value=_xml(text))
    for r in run.results:
        tc = etree.SubElement(
            suite,
            "testcase",
            classname=r.info.grade,
            name=_xml(f"{r.info.id} {r.info.title}"),
            time=f"{r.duration:.3f}",
        )
        if r.verdict == "fail":
            el = etree.SubElement(tc, "failure", message=_xml(r.reason, 1000), type="CaseFailed")
            el.text = _xml(_junit_body(r))
        elif r.verdict == "error":
            kind = "RunError" if run.run_error else ("NotRun" if r.blocked_by else "CaseError")
            el = etree.SubElement(tc, "error", message=_xml(r.reason, 1000), type=kind)
            el.text = _xml(_junit_body(r))
        elif r.verdict == "skip":
            etree.SubElement(tc, "skipped", message=_xml(r.reason, 1000))
        out = _case_output(r)
        if out:
            etree.SubElement(tc, "system-out").text = _xml(out)
    if run.run_error:
        err = run.run_error + "\n" + run.run_traceback
        if run.start_trace:
            err += "\nSIP messages while starting:\n" + _trace_lines(run.start_trace, 0.0)
        etree.SubElement(suite, "system-err").text = _xml(err)
    return bytes(etree.tostring(root, xml_declaration=True, encoding="UTF-8", pretty_print=True))


def _case_output(r: CaseResult) -> str:
    lines = [
        f"GB/T 28181-2016 {clause_text(r.info.clause_2016)}, "
        f"GB/T 28181-2022 {clause_text(r.info.clause_2022)}"
    ]
    if r.aftermath:
        lines.append(f"Left behind: {r.aftermath}")
    lines += [f"+{s.t:.3f}s {s.text}" for s in r.steps]
    lines += [f"{k}: {v}" for k, v in r.media.items()]
    if r.trace:
        lines.append(f"SIP messages ({len(r.trace)}):")
        lines.append(_trace_lines(r.trace, r.started))
    return "\n".join(lines) if len(lines) > 1 else ""


# -- results.json --------------------------------------------------------------------------------
def _jsonable(value: Any) -> Any:
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    return repr(value)


def _entry_dict(e: TraceEntry, since: float) -> dict[str, Any]:
    return {
        "t": round(e.t - since, 6),
        "direction": e.direction,
        "label": e.label,
        "peer": e.peer,
        "first_line": e.first_line,
        "note": e.note,
        "message": e.text,
    }


def results_dict(run: RunResult) -> dict[str, Any]:
    """Everything in the reports as plain data (``t`` of messages and steps: seconds since the
    case began; ``started`` of a case: seconds since the run began)."""
    cases = []
    for r in run.results:
        i = r.info
        cases.append(
            {
                "id": i.id,
                "title": i.title,
                "grade": i.grade,
                "clause_2016": i.clause_2016,
                "clause_2022": i.clause_2022,
                "roles": sorted(i.roles),
                "editions": sorted(i.editions),
                "media": i.media,
                "doc": i.doc,
                "verdict": r.verdict,
                "started": round(r.started, 6),
                "duration": round(r.duration, 6),
                "reason": r.reason,
                "expected": r.expected,
                "seen": r.seen,
                "traceback": r.traceback,
                "steps": [{"t": round(s.t, 6), "text": s.text} for s in r.steps],
                "media_figures": _jsonable(r.media),
                "aftermath": r.aftermath,
                "blocked_by": r.blocked_by,
                "applicable": applicable(r, run),
                "failure_messages": [_entry_dict(e, r.started) for e in r.messages],
                "trace": [_entry_dict(e, r.started) for e in r.trace],
            }
        )
    return {
        "tool": TOOL,
        "format": 1,
        "options": run.options.public(),
        "started_at": run.started_at.isoformat(timespec="seconds"),
        "duration": round(run.duration, 6),
        "ok": run.ok,
        "interrupted": run.interrupted,
        "run_error": run.run_error,
        "run_traceback": run.run_traceback,
        "start_trace": [_entry_dict(e, 0.0) for e in run.start_trace],
        "totals": {**run.counts(), "total": len(run.results)},
        "state_log": [
            {
                "after": n.case_id,
                "problems": list(n.problems),
                "switches_reset": list(n.reset),
                "restored": n.restored,
                "waited": round(n.waited, 3),
                "still": list(n.still),
            }
            for n in run.state_log
        ],
        "findings": [f.as_dict() for f in run.findings],
        "cases": cases,
    }


def applicable(r: CaseResult, run: RunResult) -> bool:
    """Whether a case applies to this run: its role and edition match and, if it needs an
    operator, the run has one (a skip for any other reason is an applicable case not
    passed)."""
    if r.info.not_applicable(run.options):
        return False
    return not (r.info.operator and r.verdict == "skip" and r.reason == NO_OPERATOR)


# -- HTML ----------------------------------------------------------------------------------------
_CSS = """
:root { --pass: #1a7f37; --fail: #cf222e; --skip: #6e7781; --error: #bc4c00; --line: #d0d7de; }
* { box-sizing: border-box; }
body { font: 14px/1.45 system-ui, sans-serif; margin: 0 auto; max-width: 1200px; padding: 1em;
  color: #1f2328; }
h1 { font-size: 1.5em; margin: 0 0 .4em; }
h3 { font-size: 1em; margin: 1em 0 .3em; }
table { border-collapse: collapse; }
th, td { text-align: left; vertical-align: top; padding: .15em .6em; }
table.meta th { font-weight: 600; color: #57606a; }
table.summary, table.trace { width: 100%; }
table.summary tr, table.trace tr { border-bottom: 1px solid var(--line); }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
pre { white-space: pre-wrap; word-break: break-all; margin: .2em 0;
  font: 12px/1.4 ui-monospace, monospace; background: #f6f8fa; padding: .4em .6em; }
.totals { font-size: 1.15em; margin: .6em 0; }
.count { display: inline-block; padding: .1em .6em; margin-right: .4em; border-radius: 1em;
  color: #fff; font-weight: 600; }
.verdict { display: inline-block; min-width: 4.2em; text-align: center; border-radius: .3em;
  color: #fff; font-weight: 700; font-size: .85em; padding: 0 .3em; }
.v-pass { background: var(--pass); } .v-fail { background: var(--fail); }
.v-skip { background: var(--skip); } .v-error { background: var(--error); }
details.case { border: 1px solid var(--line); border-left: 6px solid var(--skip);
  border-radius: .3em; margin: .4em 0; }
details.case.c-pass { border-left-color: var(--pass); }
details.case.c-fail { border-left-color: var(--fail); }
details.case.c-error { border-left-color: var(--error); }
details.case > summary { cursor: pointer; padding: .35em .6em; list-style-position: inside; }
details.case > summary .cid { font-family: ui-monospace, monospace; font-weight: 600; }
details.case > summary .secs { float: right; color: #57606a; }
.body { padding: 0 1em 1em; }
.failure { border: 1px solid var(--fail); background: #fff5f5; padding: .5em .8em;
  border-radius: .3em; }
.failure.error { border-color: var(--error); background: #fff8f0; }
.reason { font-weight: 600; margin: .2em 0; }
dl.facts { display: grid; grid-template-columns: max-content auto; gap: .1em 1em; margin: .5em 0; }
dl.facts dt { font-weight: 600; color: #57606a; } dl.facts dd { margin: 0; }
table.trace td { font: 12px/1.4 ui-monospace, monospace; }
table.trace tr.involved { background: #fff8c5; }
table.trace td.dir-sent { color: #0969da; } table.trace td.dir-received { color: #8250df; }
details.msg > summary, details.start-trace > summary { cursor: pointer; }
.note { color: #57606a; font-style: italic; }
.controls { margin: .6em 0; } .controls label { margin-right: .8em; }
.run-error { border: 2px solid var(--error); padding: .5em 1em; margin: .6em 0; }
.state li.not-restored { color: var(--error); font-weight: 600; }
[hidden] { display: none !important; }
"""

_JS = """
(function () {
  var cases = Array.prototype.slice.call(document.querySelectorAll('details.case'));
  function setAll(open) {
    cases.forEach(function (d) { if (!d.hidden) { d.open = open; } });
  }
  document.getElementById('expand-all').addEventListener('click', function () { setAll(true); });
  document.getElementById('collapse-all').addEventListener('click', function () {
    setAll(false);
  });
  document.querySelectorAll('input[data-filter]').forEach(function (box) {
    box.addEventListener('change', function () {
      var verdict = box.getAttribute('data-filter');
      document.querySelectorAll('[data-verdict="' + verdict + '"]').forEach(function (el) {
        el.hidden = !box.checked;
      });
    });
  });
  function openFromHash() {
    var id = decodeURIComponent(location.hash.slice(1));
    var el = id ? document.getElementById(id) : null;
    if (el && el.tagName === 'DETAILS') { el.open = true; el.scrollIntoView(); }
  }
  window.addEventListener('hashchange', openFromHash);
  openFromHash();
})();
"""


def _e(value: object) -> str:
    return escape(str(value), quote=True)


def _anchor(case_id: str) -> str:
    return "case-" + re.sub(r"[^A-Za-z0-9_.-]", "_", case_id)


def _trace_table(entries: list[TraceEntry], since: float, involved: set[int]) -> str:
    if not entries:
        return '<p class="note">No SIP message was sent or received.</p>'
    rows = []
    for e in entries[:HTML_TRACE_LIMIT]:
        cls = f"{e.direction}{' involved' if id(e) in involved else ''}"
        arrow = "sent →" if e.direction == "sent" else "← received"
        note = f' <span class="note">({_e(e.note)})</span>' if e.note else ""
        rows.append(
            f'<tr class="{cls}"><td class="num">+{e.t - since:.3f}</td><td>{_e(e.label)}</td>'
            f'<td class="dir-{_e(e.direction)}">{arrow}</td><td>{_e(e.peer)}</td>'
            f'<td><details class="msg"><summary>{_e(e.first_line)}{note}</summary>'
            f"<pre>{_e(e.text)}</pre></details></td></tr>"
        )
    more = ""
    if len(entries) > HTML_TRACE_LIMIT:
        more = (
            f'<p class="note">{len(entries) - HTML_TRACE_LIMIT} more messages are in '
            f"{JSON_FILE}.</p>"
        )
    return (
        '<table class="trace"><thead><tr><th class="num">s</th><th>suite side</th>'
        "<th>dir</th><th>peer</th><th>message</th></tr></thead><tbody>"
        + "".join(rows)
        + "</tbody></table>"
        + more
    )


def _failure_html(r: CaseResult) -> str:
    if r.verdict not in ("fail", "error", "skip"):
        return ""
    if r.verdict == "skip":
        return f'<p class="reason skip-reason">Skipped: {_e(r.reason)}</p>'
    parts = [f'<div class="failure {r.verdict}">', f'<p class="reason">{_e(r.reason)}</p>']
    if r.expected is not None:
        parts.append(f'<h3>Expected</h3><pre class="expected">{_e(r.expected)}</pre>')
    if r.seen is not None:
        parts.append(f'<h3>Seen</h3><pre class="seen">{_e(r.seen)}</pre>')
    if r.traceback:
        parts.append(
            f'<details class="tb"><summary>Traceback</summary><pre>{_e(r.traceback)}</pre>'
            "</details>"
        )
    if r.messages:
        parts.append(
            f"<p>{len(r.messages)} SIP messages involved (highlighted in the trace below):</p>"
            f'<pre class="involved">{_e(_trace_lines(r.messages, r.started))}</pre>'
        )
    parts.append("</div>")
    return "".join(parts)


def _case_html(r: CaseResult) -> str:
    i = r.info
    facts = [
        ("GB/T 28181-2016", clause_text(i.clause_2016)),
        ("GB/T 28181-2022", clause_text(i.clause_2022)),
        ("Grade", i.grade),
        ("Target roles", ", ".join(sorted(i.roles))),
        ("Editions", ", ".join(sorted(i.editions))),
        ("Duration", f"{r.duration:.3f} s"),
    ]
    if r.aftermath:
        facts.append(("Left behind", r.aftermath))
    if r.blocked_by:
        facts.append(("Not run because of", r.blocked_by))
    parts = [
        f'<details class="case c-{r.verdict}" id="{_anchor(i.id)}" data-verdict="{r.verdict}">',
        f'<summary><span class="verdict v-{r.verdict}">{r.verdict.upper()}</span> '
        f'<span class="cid">{_e(i.id)}</span> <span class="grade">[{_e(i.grade)}]</span> '
        f'<span class="title">{_e(i.title)}</span> '
        f'<span class="secs">{r.duration:.2f} s</span></summary>',
        '<div class="body">',
        '<dl class="facts">'
        + "".join(f"<dt>{_e(k)}</dt><dd>{_e(v)}</dd>" for k, v in facts)
        + "</dl>",
        _failure_html(r),
        f'<h3>Procedure and pass criteria</h3><pre class="doc">{_e(i.doc)}</pre>',
    ]
    if r.steps:
        parts.append(
            '<h3>Steps</h3><ol class="steps">'
            + "".join(
                f'<li><span class="num">+{s.t:.3f} s</span> {_e(s.text)}</li>' for s in r.steps
            )
            + "</ol>"
        )
    if r.media:
        parts.append(
            '<h3>Media</h3><table class="media">'
            + "".join(f"<tr><th>{_e(k)}</th><td>{_e(v)}</td></tr>" for k, v in r.media.items())
            + "</table>"
        )
    if r.trace or r.verdict in ("pass", "fail", "error"):
        parts.append(f"<h3>SIP messages ({len(r.trace)})</h3>")
        parts.append(_trace_table(r.trace, r.started, {id(e) for e in r.messages}))
    parts.append("</div></details>")
    return "\n".join(parts)


def _findings_html(run: RunResult) -> str:
    if not run.findings:
        return ""
    rows = "".join(
        f'<tr data-quirk="{_e(f.quirk)}"><td>{_e(f.side)}</td><td><code>{_e(f.quirk)}</code>'
        f"</td><td>{_e(f.title)}</td><td>{_e(f.detail)}</td>"
        f'<td class="num">{f.count}</td><td>'
        + (f'<a href="#{_anchor(f.case)}">{_e(f.case)}</a>' if f.case else "-")
        + "</td><td><pre>"
        + _e("\n".join(e.describe() for e in f.evidence))
        + "</pre></td></tr>"
        for f in run.findings
    )
    return (
        f'<details class="findings" id="findings" open><summary>Findings: {len(run.findings)}'
        " quirks of real equipment the target shows (not verdicts)</summary>"
        '<table class="summary"><thead><tr><th>Side</th><th>Quirk</th><th>What</th>'
        '<th>Seen first</th><th class="num">Times</th><th>Case</th><th>Messages</th></tr>'
        f"</thead><tbody>{rows}</tbody></table></details>"
    )


def html_report(run: RunResult) -> str:
    o = run.options
    counts = run.counts()
    nonce = secrets.token_urlsafe(16)
    title = f"GB/T 28181 conformance: {o.target_role} {target_text(run)} ({o.edition})"
    meta = [
        ("Target role", o.target_role),
        ("Target", target_text(run)),
        ("Target ID", o.target_id or "-"),
        ("Target domain", o.target_domain or "-"),
        ("Edition", f"GB/T 28181-{o.edition}"),
        ("Media transports", ", ".join(o.media_transports) or "none"),
        ("Suite as platform", f"{o.suite_platform_id} (domain {o.suite_domain})"),
        ("Suite devices", ", ".join(o.suite_device_ids)),
        ("Suite address", f"{o.local_host}:{o.local_port or 'any'}"),
        ("Selection", " and ".join(f"({s})" for s in o.select) or "all"),
        ("Grades", ", ".join(o.grades) or "all"),
        ("Started", run.started_at.isoformat(sep=" ", timespec="seconds")),
        ("Duration", f"{run.duration:.1f} s"),
    ]
    totals = "".join(
        f'<span class="count v-{v}" data-count="{v}">{counts[v]} {v}</span>' for v in VERDICTS
    )
    run_error = ""
    if run.run_error:
        run_error = (
            f'<section class="run-error" id="run-error"><h2>The run could not start</h2>'
            f'<p class="reason">{_e(run.run_error)}</p>'
            f"<details><summary>Traceback</summary><pre>{_e(run.run_traceback)}</pre></details>"
            f"<h3>SIP messages while starting ({len(run.start_trace)})</h3>"
            f"{_trace_table(run.start_trace, 0.0, set())}</section>"
        )
    elif run.start_trace:
        run_error = (
            '<details class="start-trace" id="start-trace"><summary>SIP messages while the '
            f"suite took its place ({len(run.start_trace)}): registrations</summary>"
            f"{_trace_table(run.start_trace, 0.0, set())}</details>"
        )
    interrupted = '<p class="reason">The run was interrupted.</p>' if run.interrupted else ""
    notes = [n for n in run.state_log if n.problems]
    state = ""
    if notes:
        state = (
            '<section class="state" id="state"><h2>Left out of place by cases</h2>'
            "<p>What a case left the target in; the runner put it back before the next case "
            "(or could not: the cases after it were not run while it lasted).</p><ul>"
            + "".join(
                f'<li class="{"restored" if n.restored else "not-restored"}">'
                f'<a href="#{_anchor(n.case_id)}">{_e(n.case_id)}</a>: '
                f"{_e(n.describe().split(': ', 1)[1])}</li>"
                for n in notes
            )
            + "</ul></section>"
        )
    findings = _findings_html(run)
    filters = "".join(
        f'<label><input type="checkbox" data-filter="{v}" checked> {v}</label>' for v in VERDICTS
    )
    summary_rows = "".join(
        f'<tr data-verdict="{r.verdict}"><td><a href="#{_anchor(r.info.id)}">{_e(r.info.id)}</a>'
        f"</td><td>{_e(r.info.grade)}</td><td>{_e(clause_text(r.info.clause_2016))}</td>"
        f"<td>{_e(clause_text(r.info.clause_2022))}</td><td>{_e(r.info.title)}</td>"
        f'<td><span class="verdict v-{r.verdict}">{r.verdict}</span></td>'
        f'<td class="num">{r.duration:.2f}</td></tr>'
        for r in run.results
    )
    csp = (
        f"default-src 'none'; style-src 'nonce-{nonce}'; script-src 'nonce-{nonce}'; "
        "img-src data:; base-uri 'none'; form-action 'none'"
    )
    return "\n".join(
        [
            "<!DOCTYPE html>",
            '<html lang="en"><head><meta charset="utf-8">',
            f'<meta http-equiv="Content-Security-Policy" content="{_e(csp)}">',
            '<meta name="viewport" content="width=device-width, initial-scale=1">',
            f'<meta name="generator" content="{TOOL}">',
            f"<title>{_e(title)}</title>",
            f'<style nonce="{nonce}">{_CSS}</style>',
            "</head><body>",
            f"<header><h1>{_e(title)}</h1>",
            '<table class="meta">'
            + "".join(f"<tr><th>{_e(k)}</th><td>{_e(v)}</td></tr>" for k, v in meta)
            + "</table>",
            f'<p class="totals" id="totals" data-total="{len(run.results)}">{totals}'
            f" of {len(run.results)} cases</p>",
            run_error,
            interrupted,
            state,
            findings,
            '<nav class="controls"><button type="button" id="expand-all">Expand all</button> '
            '<button type="button" id="collapse-all">Collapse all</button> '
            f"Show: {filters}</nav></header>",
            "<main>",
            '<table class="summary"><thead><tr><th>ID</th><th>Grade</th><th>2016</th>'
            '<th>2022</th><th>Title</th><th>Verdict</th><th class="num">s</th></tr></thead>'
            f"<tbody>{summary_rows}</tbody></table>",
            '<section id="cases">',
            *(_case_html(r) for r in run.results),
            "</section></main>",
            f'<script nonce="{nonce}">{_JS}</script>',
            "</body></html>",
            "",
        ]
    )
