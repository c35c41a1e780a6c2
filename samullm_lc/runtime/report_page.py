"""A run report as one self-contained HTML page: the headline, a table per model, the two charts, the planning
decisions, the engines and the errors.

One file to open in any browser or attach to a message: the charts are PNGs embedded as base64 data URIs,
the style is inline, nothing loads from elsewhere and nothing needs JavaScript. Every text from the run
(model names, reasons, errors) is escaped. ``RunReport.save_html`` writes it; ``samullm report``, the demo and
the LangChain drop-in's reports all give the same page.
"""

from __future__ import annotations

import base64
from collections.abc import Collection, Iterable, Sequence
from html import escape
from typing import TYPE_CHECKING

from samullm_lc.planner.cluster import device_word
from samullm_lc.runtime.report_charts import plan_vs_actual_image, throughput_image

if TYPE_CHECKING:
    from samullm_lc.runtime.report import RunReport

STYLE = """
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2em auto; max-width: 1200px;
       padding: 0 1em; color: #1d2125; }
h1 { font-size: 1.5em; margin-bottom: 0.2em; } h2 { font-size: 1.15em; margin-top: 1.8em; }
.sub { color: #5b6670; margin-top: 0; }
.cards { display: flex; flex-wrap: wrap; gap: 0.8em; margin: 1em 0; }
.card { border: 1px solid #d8dde2; border-radius: 6px; padding: 0.6em 1em; min-width: 11em; }
.card b { display: block; font-size: 1.35em; } .card span { color: #5b6670; font-size: 0.9em; }
.ok { color: #1a7f37; } .bad { color: #b42318; }
table { border-collapse: collapse; width: 100%; font-size: 0.92em; }
th, td { border-bottom: 1px solid #e4e7ea; padding: 0.3em 0.6em; text-align: left; vertical-align: top; }
th { background: #f4f6f8; } td.n, th.n { text-align: right; font-variant-numeric: tabular-nums; }
img { max-width: 100%; height: auto; border: 1px solid #e4e7ea; }
ul.errors li { color: #b42318; }
"""


def report_html(report: RunReport) -> str:
    """The whole page for ``report``, as text."""
    devices = device_word(report.cluster)
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>Run report: {escape(report.backend)} on {escape(report.cluster)}</title>",
        f"<style>{STYLE}</style></head><body>",
        f"<h1>Run report: {escape(report.backend)} on {escape(report.cluster)}</h1>",
        f'<p class="sub">planner {escape(report.planner)}; {escape(_status(report))}</p>',
        _headline(report),
        "<h2>Per model</h2>",
        _models_table(report),
        "<h2>Plan vs actual</h2>",
        (f'<p class="sub">Above: the initial plan as estimated; below: the run as it happened ({escape(devices)} x '
         "seconds, hatched: loading the model).</p>"),
        _image(plan_vs_actual_image(report), "Gantt chart: the initial plan above the actual run"),
        "<h2>Output tokens per second</h2>",
        _image(throughput_image(report), "Output tokens per second per model over the run"),
        "<h2>Planning decisions</h2>",
        _replans_table(report),
        "<h2>Engines</h2>",
        _engines_table(report),
    ]
    if report.call_sites:
        parts += ["<h2>LangChain call sites</h2>",
                  _table(["call site", "calls"], [[site, f"{count:,}"] for site, count in report.call_sites.items()],
                         numeric={1})]
    parts += ["<h2>Errors</h2>", _errors(report), "</body></html>"]
    return "\n".join(parts) + "\n"


def _status(report: RunReport) -> str:
    if report.interrupted:
        return "interrupted before every request finished"
    return "every request answered" if report.ok else "finished with failures or errors"


def _headline(report: RunReport) -> str:
    """The figures a reader looks for first, as cards."""
    estimated = (f"estimated {report.estimated_seconds:.1f} s ({report.estimation_error:+.1%})"
                 if report.estimation_error is not None else "no estimate")
    output_tokens = sum(m.output_tokens for m in report.models)
    failed_class = "bad" if report.requests_failed else "ok"
    cards = [
        (f"{report.seconds:.1f} s", f"end to end, measured; {estimated}", ""),
        (f"{report.requests_done:,}", "requests done", "ok" if report.ok else ""),
        (f"{report.requests_failed:,}", "requests failed", failed_class),
        (f"{report.output_tokens_per_second:,.0f}", f"output tokens/s ({output_tokens:,} tokens)", ""),
        (f"{len(report.replans)}", f"planning decisions; {len(report.engine_failures)} engine failures", ""),
    ]
    body = "".join(f'<div class="card"><b class="{css}">{escape(value)}</b><span>{escape(label)}</span></div>'
                   for value, label, css in cards)
    return f'<div class="cards">{body}</div>'


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def _models_table(report: RunReport) -> str:
    rows = []
    for m in report.models:
        error = f"{m.finish_error:+.1%}" if m.finish_error is not None else "-"
        rows.append([m.model, f"{m.requests_done:,} / {m.requests_submitted:,}", f"{m.requests_failed:,}",
                     f"{m.from_journal:,}", f"{m.prompt_tokens:,}", f"{m.output_tokens:,}",
                     _seconds(m.last_finish_seconds), _seconds(m.estimated_finish_seconds), error])
    return _table(["model", "done / submitted", "failed", "from journal", "prompt tokens", "output tokens",
                   "finished at s", "estimated s", "estimate error"], rows, numeric=set(range(1, 9)))


def _replans_table(report: RunReport) -> str:
    rows = [[_seconds(r.at_seconds), r.reason, f"{r.planning_seconds:.2f}", "; ".join(r.stage) or "nothing to run",
             _seconds(r.planned_stage_seconds), _seconds(r.actual_stage_seconds)] for r in report.replans]
    return _table(["at s", "reason", "planning s", "stage it started", "planned s", "ran s"], rows,
                  numeric={0, 2, 4, 5})


def _engines_table(report: RunReport) -> str:
    rows = []
    for span in sorted(report.engines, key=lambda s: (s.started_seconds, s.devices)):
        load = _seconds(span.ready_seconds - span.started_seconds) if span.ready_seconds is not None else "never ready"
        rows.append([span.model, ", ".join(map(str, span.devices)), str(span.tp), f"{span.memory_fraction:.0%}",
                     _seconds(span.started_seconds), load, _seconds(span.stopped_seconds), f"{span.requests_done:,}"])
    return _table(["model", device_word(report.cluster), "TP", "memory", "started s", "load s", "stopped s",
                   "requests"], rows, numeric={2, 3, 4, 5, 6, 7})


def _errors(report: RunReport) -> str:
    problems = list(report.errors) + [f"engine failure at {failure}" for failure in report.engine_failures]
    if report.requests_rejected:
        problems.append(f"{report.requests_rejected:,} requests refused at submission (bad input, or the pool was "
                        "closed or had failed)")
    if report.journal_recomputed:
        problems.append(f"{report.journal_recomputed:,} journalled results could not be read and were recomputed")
    if not problems:
        return '<p class="ok">None.</p>'
    return '<ul class="errors">' + "".join(f"<li>{escape(problem)}</li>" for problem in problems) + "</ul>"


def _table(header: Sequence[str], rows: Iterable[Sequence[str]], *, numeric: Collection[int] = ()) -> str:
    """An HTML table of text cells (escaped); columns in ``numeric`` align right."""
    def cells(values: Sequence[str], tag: str) -> str:
        return "".join(f'<{tag}{" class=n" if i in numeric else ""}>{escape(v)}</{tag}>' for i, v in enumerate(values))

    body = "".join(f"<tr>{cells(row, 'td')}</tr>" for row in rows)
    if not body:
        return '<p class="sub">None.</p>'
    return f"<table><thead><tr>{cells(header, 'th')}</tr></thead><tbody>{body}</tbody></table>"


def _image(png: bytes, alt: str) -> str:
    """A PNG embedded in the page as a data URI."""
    return f'<p><img alt="{escape(alt)}" src="data:image/png;base64,{base64.b64encode(png).decode("ascii")}"></p>'


__all__ = ["report_html"]
