"""A small HTML report builder: one self-contained file, readable offline.

A :class:`Report` holds :class:`Section` objects; each section holds blocks (paragraphs, tables,
figures, key-value facts, preformatted text) in the order they were added. ``Report.write``
renders everything into one HTML file with inline CSS and figures embedded as base64 PNG data
URIs, so the file can be mailed, archived or opened without a network. No JavaScript, no web
fonts, no template engine: every piece of text goes through :func:`html.escape`.

Example::

    report = Report("My run")
    sec = report.section("Data")
    sec.paragraph("Scenes of scattered digits.")
    sec.table([{"split": "test", "scenes": 100}])
    sec.figure(fig, "Four test scenes", name="scenes")
    report.write("runs/x/report.html", figures_dir="runs/x/figures")
"""

from __future__ import annotations

import base64
import html
import math
import numbers
import re
import struct
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from wherewhat.io import PNG_SIGNATURE, png_bytes, write_atomic
from wherewhat.metrics.summary import meets

__all__ = [
    "Check",
    "benchmark_targets",
    "Report",
    "Section",
    "format_value",
    "png_size",
]


def format_value(value: Any) -> str:
    """Readable text for a table cell or fact: ints with thousands separators, floats to about
    four significant digits, bools as yes/no, None and NaN as an em dash."""
    if value is None:
        return "\u2014"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if hasattr(value, "item") and callable(value.item) and getattr(value, "ndim", 1) == 0:
        value = value.item()  # numpy / torch scalars
    if isinstance(value, numbers.Integral):
        return f"{int(value):,}"
    if isinstance(value, numbers.Real):
        value = float(value)
        if math.isnan(value):
            return "\u2014"
        if math.isinf(value):
            return "\u221e" if value > 0 else "-\u221e"
        magnitude = abs(value)
        if magnitude == 0:
            return "0"
        if 1e-3 <= magnitude < 1e4:
            return f"{value:.4g}"
        if 1e4 <= magnitude < 1e12:
            return f"{value:,.0f}"
        return f"{value:.3e}"
    return str(value)


def _is_number(value: Any) -> bool:
    return isinstance(value, numbers.Number) and not isinstance(value, bool)


def png_size(data: bytes) -> tuple[int, int]:
    """(width, height) in pixels, read from a PNG's IHDR chunk."""
    if not data.startswith(PNG_SIGNATURE) or data[12:16] != b"IHDR":
        raise ValueError("not a PNG image")
    width, height = struct.unpack(">II", data[16:24])
    return width, height


def slugify(text: str) -> str:
    """Lower-case ASCII identifier usable as an HTML id and a file-name stem."""
    slug = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")
    return slug or "section"


# --- blocks -------------------------------------------------------------------------------------


@dataclass
class _Paragraph:
    text: str

    def render(self) -> str:
        return f"<p>{html.escape(self.text)}</p>"


@dataclass
class _Pre:
    text: str
    caption: str | None = None
    css_class: str = ""

    def render(self) -> str:
        cls = f' class="{self.css_class}"' if self.css_class else ""
        cap = f'<div class="caption">{html.escape(self.caption)}</div>' if self.caption else ""
        return f"{cap}<pre{cls}>{html.escape(self.text)}</pre>"


@dataclass
class _Table:
    columns: list[str]
    rows: list[list[Any]]
    caption: str | None = None

    def render(self) -> str:
        out = ["<table>"]
        if self.caption:
            out.append(f"<caption>{html.escape(self.caption)}</caption>")
        out.append("<thead><tr>")
        out.extend(f"<th>{html.escape(str(c))}</th>" for c in self.columns)
        out.append("</tr></thead><tbody>")
        for row in self.rows:
            out.append("<tr>")
            for value in row:
                cls = ' class="num"' if _is_number(value) else ""
                out.append(f"<td{cls}>{html.escape(format_value(value))}</td>")
            out.append("</tr>")
        out.append("</tbody></table>")
        return "".join(out)


@dataclass
class _Facts:
    items: list[tuple[str, Any]]
    caption: str | None = None

    def render(self) -> str:
        cap = f'<div class="caption">{html.escape(self.caption)}</div>' if self.caption else ""
        body = "".join(
            f"<dt>{html.escape(str(k))}</dt><dd>{html.escape(format_value(v))}</dd>"
            for k, v in self.items
        )
        return f'{cap}<dl class="facts">{body}</dl>'


@dataclass
class _Figure:
    png: bytes
    caption: str
    name: str

    def render(self) -> str:
        width, height = png_size(self.png)
        data = base64.b64encode(self.png).decode("ascii")
        caption = html.escape(self.caption)
        return (
            f'<figure><img src="data:image/png;base64,{data}" width="{width}" '
            f'height="{height}" alt="{caption}"><figcaption>{caption}</figcaption></figure>'
        )


@dataclass(frozen=True)
class Check:
    """One number judged: this run's value beside the benchmark's and the paper's.

    ``target``: ``(op, bound)`` with op one of >=, >, <=, < (e.g. ``(">=", 0.97)``).
    ``benchmark`` / ``paper``: the same quantity from the project's benchmark results file and
    from the paper (None: not known). The verdict judges this run's ``value``, or with
    ``judge_benchmark`` the benchmark's (an accuracy target that only a full training run can
    meet; a short run's value is shown for reference). ``note``: what a miss means.
    """

    quantity: str
    value: float | None
    benchmark: float | None = None
    paper: float | None = None
    target: tuple[str, float] | None = None
    note: str = ""
    judge_benchmark: bool = False

    @property
    def judged(self) -> float | None:
        return self.benchmark if self.judge_benchmark else self.value

    @property
    def met(self) -> bool | None:
        return None if self.target is None else meets(self.judged, *self.target)


def benchmark_targets(result: Mapping[str, Any] | None) -> dict[str, tuple[str, float]]:
    """A results file's ``targets`` as ``{quantity: (op, bound)}``, from either form the
    benchmarks write: ``{"op": ">=", "value": 0.95}`` or ``[">=", 0.95]`` (empty without one)."""
    targets: dict[str, tuple[str, float]] = {}
    for key, target in ((result or {}).get("targets") or {}).items():
        op, bound = (target["op"], target["value"]) if isinstance(target, Mapping) else target
        targets[key] = (str(op), float(bound))
    return targets


@dataclass
class _Checks:
    checks: list[Check]
    caption: str | None = None

    def render(self) -> str:
        out = ['<table class="checks">']
        if self.caption:
            out.append(f"<caption>{html.escape(self.caption)}</caption>")
        heads = ("quantity", "this run", "benchmark", "paper", "target", "", "note")
        out.append("<thead><tr>" + "".join(f"<th>{h}</th>" for h in heads) + "</tr></thead>")
        out.append("<tbody>")
        for check in self.checks:
            met = check.met
            verdict, cls = {True: ("met", "met"), False: ("MISSED", "missed")}.get(met, ("", ""))
            if verdict and check.judge_benchmark:
                verdict += " by the benchmark"
            target = "" if check.target is None else f"{check.target[0]} {check.target[1]:g}"
            cells = [
                f"<td>{html.escape(check.quantity)}</td>",
                *(
                    f'<td class="num">{html.escape(format_value(v))}</td>'
                    for v in (check.value, check.benchmark, check.paper)
                ),
                f"<td>{html.escape(target)}</td>",
                f'<td class="verdict {cls}">{verdict}</td>',
                f'<td class="note">{html.escape(check.note)}</td>',
            ]
            row_cls = ' class="missed"' if met is False else ""
            out.append(f"<tr{row_cls}>{''.join(cells)}</tr>")
        out.append("</tbody></table>")
        return "".join(out)


@dataclass
class _Flag:
    text: str

    def render(self) -> str:
        return f'<p class="flag"><strong>Look here:</strong> {html.escape(self.text)}</p>'


# --- section and report -------------------------------------------------------------------------


@dataclass
class Section:
    """One titled part of a report; add blocks with the methods below (each returns ``self``).

    ``numbers`` collects the section's key results (plain JSON-able values); the tour copies them
    into ``summary.json``. ``status`` is ``"ok"`` or ``"failed"``; ``seconds`` is set by the tour.
    """

    title: str
    name: str = ""
    status: str = "ok"
    seconds: float | None = None
    numbers: dict[str, Any] = field(default_factory=dict)
    blocks: list[Any] = field(default_factory=list)
    flags: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.name:
            self.name = slugify(self.title)

    def paragraph(self, text: str) -> Section:
        """A paragraph of plain text (escaped; no markup)."""
        self.blocks.append(_Paragraph(str(text)))
        return self

    def pre(self, text: str, caption: str | None = None) -> Section:
        """Preformatted text (logs, tracebacks, configs), shown in a monospace box."""
        self.blocks.append(_Pre(str(text), caption))
        return self

    def table(
        self,
        rows: Sequence[Mapping[str, Any]] | Sequence[Sequence[Any]],
        columns: Sequence[str] | None = None,
        caption: str | None = None,
    ) -> Section:
        """A table from a list of dicts (columns: given, or the keys in first-seen order; a
        missing key shows as a dash) or from a list of row sequences plus ``columns``."""
        rows = list(rows)
        if rows and isinstance(rows[0], Mapping):
            if columns is None:
                seen: dict[str, None] = {}
                for row in rows:
                    seen.update(dict.fromkeys(row))
                columns = list(seen)
            cells = [[row.get(c) for c in columns] for row in rows]
        else:
            if columns is None:
                raise ValueError("table(): rows given as sequences need `columns`")
            cells = [list(row) for row in rows]
            for i, row in enumerate(cells):
                if len(row) != len(columns):
                    raise ValueError(
                        f"table(): row {i} has {len(row)} cells, expected {len(columns)} "
                        f"(columns {list(columns)})"
                    )
        self.blocks.append(_Table([str(c) for c in (columns or [])], cells, caption))
        return self

    def facts(self, items: Mapping[str, Any] | Iterable[tuple[str, Any]], caption=None) -> Section:
        """Key-value pairs (a definition list), e.g. machine information."""
        pairs = list(items.items()) if isinstance(items, Mapping) else list(items)
        self.blocks.append(_Facts(pairs, caption))
        return self

    def figure(self, figure: Any, caption: str, name: str | None = None) -> Section:
        """Embed a matplotlib Figure (rendered to PNG now, at its dpi) or PNG bytes.

        ``name`` is the file-name stem used when the report also saves figures as files.
        """
        index = sum(isinstance(b, _Figure) for b in self.blocks)
        stem = slugify(name) if name else f"figure-{index + 1}"
        self.blocks.append(_Figure(png_bytes(figure), str(caption), stem))
        return self

    def checks(self, checks: Sequence[Check], caption: str | None = None) -> Section:
        """A table judging numbers (:class:`Check`): this run, the benchmark, the paper, the
        target and the verdict; every missed target also becomes a :meth:`flag`."""
        checks = list(checks)
        self.blocks.append(_Checks(checks, caption))
        for check in checks:
            if check.met is False:
                op, bound = check.target or ("", 0.0)
                note = f" ({check.note})" if check.note else ""
                whose = "the benchmark's " if check.judge_benchmark else ""
                self.flags.append(
                    f"{whose}{check.quantity} = {format_value(check.judged)} misses its target "
                    f"{op} {bound:g}{note}"
                )
        return self

    def flag(self, text: str) -> Section:
        """A number that misses its target or looks wrong: shown as a callout where it is
        added, counted in the contents and kept in ``flags`` (the tour's summary)."""
        self.flags.append(str(text))
        self.blocks.append(_Flag(str(text)))
        return self

    def record(self, **numbers: Any) -> Section:
        """Remember key results for the machine-readable summary (not rendered by itself)."""
        self.numbers.update(numbers)
        return self

    def fail(self, message: str) -> Section:
        """Mark the section failed and show ``message`` (e.g. a traceback)."""
        self.status = "failed"
        self.blocks.append(_Pre(message, "Error", css_class="error"))
        return self

    @property
    def figures(self) -> list[tuple[str, bytes]]:
        """``(name, png bytes)`` of every figure in this section."""
        return [(b.name, b.png) for b in self.blocks if isinstance(b, _Figure)]

    def render(self) -> str:
        badge = ' <span class="badge failed">FAILED</span>' if self.status == "failed" else ""
        if self.flags:
            badge += f' <span class="badge flagged">{len(self.flags)} flagged</span>'
        timing = (
            f' <span class="timing">{self.seconds:.1f} s</span>' if self.seconds is not None else ""
        )
        head = f'<h2 id="{html.escape(self.name)}">{html.escape(self.title)}{badge}{timing}</h2>'
        body = "\n".join(block.render() for block in self.blocks)
        cls = "section failed" if self.status == "failed" else "section"
        return f'<section class="{cls}">\n{head}\n{body}\n</section>'


_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,Helvetica,Arial,sans-serif;
 max-width:1100px;margin:2em auto;padding:0 1em;color:#222;line-height:1.45}
h1{margin-bottom:.2em}h2{border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:2em}
.subtitle{color:#666;margin-top:0}
table{border-collapse:collapse;margin:.8em 0;font-size:.92em;display:block;max-width:100%;
 overflow-x:auto}
caption{caption-side:top;text-align:left;font-weight:600;padding:.3em 0}
th,td{border:1px solid #ddd;padding:.25em .6em;text-align:left}
th{background:#f3f3f3}td.num{text-align:right;font-variant-numeric:tabular-nums}
tbody tr:nth-child(even){background:#fafafa}
figure{margin:1em 0}figure img{max-width:100%;height:auto;border:1px solid #eee}
figcaption,.caption{color:#555;font-size:.9em;margin:.3em 0}
pre{background:#f6f6f6;padding:.7em;overflow-x:auto;font-size:.85em}
pre.error{background:#fff0f0;border-left:4px solid #c00}
dl.facts{display:grid;grid-template-columns:max-content auto;gap:.15em 1.2em;font-size:.92em}
dl.facts dt{font-weight:600}dl.facts dd{margin:0}
.badge{font-size:.6em;padding:.15em .5em;border-radius:.3em;vertical-align:middle}
.badge.failed{background:#c00;color:#fff}.badge.ok{background:#2a7;color:#fff}
.badge.flagged{background:#e8a400;color:#fff}
.timing{font-size:.6em;color:#888;font-weight:normal}
p.flag{background:#fff8e1;border-left:4px solid #e8a400;padding:.5em .8em}
table.checks td.verdict.met{color:#1a7f37;font-weight:600}
table.checks td.verdict.missed{color:#b00;font-weight:700}
table.checks tr.missed{background:#fff3f3}table.checks td.note{color:#555;font-size:.92em}
nav ul{padding-left:1.2em}
"""


class Report:
    """An ordered list of sections rendered into one self-contained HTML page."""

    def __init__(self, title: str, subtitle: str | None = None):
        self.title = str(title)
        self.subtitle = subtitle
        self.sections: list[Section] = []

    def section(self, title: str, name: str | None = None) -> Section:
        """Create, append and return a new section."""
        return self.add(Section(title, name=name or ""))

    def add(self, section: Section) -> Section:
        """Append an existing section (its name gets a suffix if already taken)."""
        taken = {s.name for s in self.sections}
        base, k = section.name, 2
        while section.name in taken:
            section.name = f"{base}-{k}"
            k += 1
        self.sections.append(section)
        return section

    @property
    def failed(self) -> list[Section]:
        return [s for s in self.sections if s.status == "failed"]

    def _contents(self) -> str:
        items = []
        for s in self.sections:
            mark = ' <span class="badge failed">FAILED</span>' if s.status == "failed" else ""
            if s.flags:
                mark += f' <span class="badge flagged">{len(s.flags)} flagged</span>'
            timing = f" ({s.seconds:.1f} s)" if s.seconds is not None else ""
            items.append(
                f'<li><a href="#{html.escape(s.name)}">{html.escape(s.title)}</a>'
                f"{html.escape(timing)}{mark}</li>"
            )
        return f"<nav><ul>{''.join(items)}</ul></nav>"

    def to_html(self) -> str:
        subtitle = f'<p class="subtitle">{html.escape(self.subtitle)}</p>' if self.subtitle else ""
        sections = "\n".join(s.render() for s in self.sections)
        return (
            "<!DOCTYPE html>\n"
            '<html lang="en">\n<head>\n<meta charset="utf-8">\n'
            '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
            f"<title>{html.escape(self.title)}</title>\n<style>{_CSS}</style>\n</head>\n<body>\n"
            f"<h1>{html.escape(self.title)}</h1>\n{subtitle}\n{self._contents()}\n"
            f"{sections}\n</body>\n</html>\n"
        )

    def write(self, path: str | Path, figures_dir: str | Path | None = None) -> Path:
        """Write the HTML atomically to ``path``; with ``figures_dir``, also save every figure
        as ``<section>-<figure>.png`` there (handy for viewing or slides). Returns ``path``."""
        if figures_dir is not None:
            for section in self.sections:
                for name, png in section.figures:
                    write_atomic(Path(figures_dir) / f"{section.name}-{name}.png", png)
        return write_atomic(path, self.to_html())
