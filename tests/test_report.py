"""Report builder, figures and tour: escaping, embedding, geometry on figures, failure handling."""

from __future__ import annotations

import base64
import io
import json
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from wherewhat.errors import ConfigError
from wherewhat.report.figures import faces_with_landmarks, new_figure, scene_grid
from wherewhat.report.html import Check, Report, Section, format_value
from wherewhat.report.tour import SectionRegistry, TourFailed, run_tour

SHARED_FACES = Path(__file__).parents[2] / "shared" / "data" / "faces68"


class _Collector(HTMLParser):
    """Counts start tags, keeps attributes of <img>/<a>/<link>/<script> and all text data."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: dict[str, int] = {}
        self.images: list[dict[str, str]] = []
        self.refs: list[str] = []
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags[tag] = self.tags.get(tag, 0) + 1
        attrs = dict(attrs)
        if tag == "img":
            self.images.append(attrs)
        for key in ("src", "href"):
            if key in attrs:
                self.refs.append(attrs[key])

    def handle_data(self, data):
        self.text.append(data)


def _parse(path: Path) -> _Collector:
    collector = _Collector()
    collector.feed(path.read_text(encoding="utf-8"))
    collector.close()
    return collector


# --- HTML builder -------------------------------------------------------------------------------


def test_format_value_known_values():
    assert format_value(1234567) == "1,234,567"
    assert format_value(np.int64(12)) == "12"
    assert format_value(3.14159265) == "3.142"
    assert format_value(0.000123) == "1.230e-04"
    assert format_value(123456.7) == "123,457"
    assert format_value(float("nan")) == "\u2014"
    assert format_value(None) == "\u2014"
    assert format_value(True) == "yes"
    assert format_value(0.0) == "0"
    assert format_value("a<b") == "a<b"  # escaping happens at render time, not here


def test_text_is_escaped_everywhere(tmp_path):
    nasty = '<script>alert("x")</script> & co'
    report = Report(f"title {nasty}", subtitle=nasty)
    section = report.section(f"sec {nasty}")
    section.paragraph(nasty).pre(nasty, caption=nasty)
    section.table([{"col<": nasty, "n": 3}], caption=nasty)
    section.facts({nasty: nasty})
    path = report.write(tmp_path / "r.html")
    raw = path.read_text(encoding="utf-8")
    assert "<script" not in raw
    assert "&lt;script&gt;" in raw
    parsed = _parse(path)
    assert "script" not in parsed.tags
    text = "".join(parsed.text)
    # The escaped text round-trips through an HTML parser to the original characters.
    assert text.count('alert("x")') >= 7
    assert "col<" in text


def test_figures_are_embedded_png_data_uris_of_the_right_size(tmp_path):
    fig = new_figure(3.0, 2.0, dpi=50)  # 150 x 100 px
    fig.add_subplot().plot([0, 1], [1, 0])
    report = Report("r")
    report.section("s").figure(fig, "a line", name="line")
    path = report.write(tmp_path / "r.html", figures_dir=tmp_path / "figs")
    (img,) = _parse(path).images
    prefix = "data:image/png;base64,"
    assert img["src"].startswith(prefix)
    png = base64.b64decode(img["src"][len(prefix) :])
    with Image.open(io.BytesIO(png)) as decoded:
        assert decoded.format == "PNG"
        assert decoded.size == (150, 100)
    assert (img["width"], img["height"]) == ("150", "100")
    assert img["alt"] == "a line"
    assert (tmp_path / "figs" / "s-line.png").read_bytes() == png


def test_written_report_parses_with_expected_structure(tmp_path):
    report = Report("structure")
    first = report.section("First")
    first.table([{"a": 1, "b": 2.5}, {"a": 3, "c": "x"}])
    first.table([[1, 2], [3, 4]], columns=["x", "y"], caption="rows")
    first.figure(new_figure(1, 1, dpi=20), "tiny")
    second = report.section("Second")
    second.facts({"cores": 2}).table([{"k": "v"}])
    second.figure(new_figure(1, 1, dpi=20), "tiny too")
    second.paragraph("p")
    path = report.write(tmp_path / "out" / "report.html")
    parsed = _parse(path)
    assert parsed.tags["table"] == 3
    assert parsed.tags["img"] == 2
    assert parsed.tags["h2"] == 2
    assert parsed.tags["dl"] == 1
    assert parsed.tags.get("script", 0) == 0
    # Self-contained: the only references are data URIs and in-page anchors.
    assert all(ref.startswith(("data:image/png;base64,", "#")) for ref in parsed.refs)
    # dict rows: columns in first-seen order, missing cells as a dash.
    raw = path.read_text(encoding="utf-8")
    assert raw.index("<th>a</th>") < raw.index("<th>b</th>") < raw.index("<th>c</th>")
    # Atomic write leaves no temporary files behind.
    assert sorted(p.name for p in path.parent.iterdir()) == ["report.html"]


def test_table_rejects_bad_rows():
    section = Section("s")
    with pytest.raises(ValueError, match="columns"):
        section.table([[1, 2]])
    with pytest.raises(ValueError, match="row 1 has 1 cells"):
        section.table([[1, 2], [3]], columns=["a", "b"])


# --- figures ------------------------------------------------------------------------------------


def _rgb(fig) -> np.ndarray:
    fig.canvas.draw()
    return np.asarray(fig.canvas.buffer_rgba())[..., :3].astype(np.float32) / 255.0


def _edges_of(mask: np.ndarray) -> tuple[float, float, float, float]:
    """(left, top, right, bottom) boundaries, in display pixels, of a mask's bounding box."""
    rows, cols = np.nonzero(mask)
    return cols.min(), rows.min(), cols.max() + 1.0, rows.max() + 1.0


def test_scene_grid_box_lies_on_the_pixels_it_describes():
    # A grey block covering exactly pixels rows 8..23, cols 4..19 of a 32x32 image has the
    # pixel-frame box [4, 8, 20, 24]. Rendered at ~8 display px per image pixel, a half-pixel
    # convention error would shift the drawn box by ~4 display px.
    image = np.full((1, 32, 32), 0.1, dtype=np.float32)
    image[0, 8:24, 4:20] = 0.6  # not white: the figure's own background is white
    box = np.array([[4.0, 8.0, 20.0, 24.0]], dtype=np.float32)
    common = {"ncols": 1, "edgecolor": (1.0, 0.0, 0.0), "panel_in": 2.56, "linewidth": 1.0}

    plain = _rgb(scene_grid([image], [np.zeros((0, 4))], None, **common))
    left, top, right, bottom = _edges_of((np.abs(plain - 0.6) < 0.05).all(axis=-1))
    assert right - left == pytest.approx(bottom - top, abs=1)  # the 16x16 block is square
    assert right - left > 100  # ~8 display px per image pixel

    boxed = _rgb(scene_grid([image], box, None, **common))
    red = (boxed[..., 0] > 0.6) & (boxed[..., 1] < 0.35) & (boxed[..., 2] < 0.35)
    mid_row, mid_col = int((top + bottom) / 2), int((left + right) / 2)
    red_cols = np.nonzero(red[mid_row])[0]  # the two vertical edges in the middle row
    red_rows = np.nonzero(red[:, mid_col])[0]  # the two horizontal edges in the middle column
    # A line centred on boundary b covers display pixels whose centres (index + 0.5) straddle b.
    assert red_cols[red_cols < mid_col].mean() + 0.5 == pytest.approx(left, abs=1.5)
    assert red_cols[red_cols > mid_col].mean() + 0.5 == pytest.approx(right, abs=1.5)
    assert red_rows[red_rows < mid_row].mean() + 0.5 == pytest.approx(top, abs=1.5)
    assert red_rows[red_rows > mid_row].mean() + 0.5 == pytest.approx(bottom, abs=1.5)


def test_scene_grid_draws_one_patch_and_text_per_box():
    images = np.zeros((3, 1, 16, 16), dtype=np.uint8)
    boxes = [np.array([[1, 1, 5, 5], [6, 6, 12, 14]]), np.zeros((0, 4)), np.array([[0, 0, 16, 16]])]
    labels = [np.array([7, 2]), np.zeros(0), np.array([9])]
    scores = [np.array([0.93, 0.5]), np.zeros(0), np.array([0.25])]
    fig = scene_grid(images, boxes, labels, ncols=2, scores=scores)
    axes = [ax for ax in fig.axes if ax.images]
    assert [len(ax.patches) for ax in axes] == [2, 0, 1]
    assert [t.get_text() for t in axes[0].texts] == ["7 0.93", "2 0.50"]


def test_landmarks_are_drawn_at_pixel_centres():
    # Pixel (row 20, col 10) has its centre at (10.5, 20.5) in the pixel frame.
    image = np.zeros((1, 32, 32), dtype=np.float32)
    image[0, 20, 10] = 0.6  # not white: the figure's own background is white
    plain = _rgb(faces_with_landmarks([image], [np.zeros((0, 2))], ncols=1, panel_in=2.56))
    left, top, right, bottom = _edges_of((np.abs(plain - 0.6) < 0.05).all(axis=-1))
    dotted = _rgb(
        faces_with_landmarks([np.zeros_like(image)], [np.array([[10.5, 20.5]])], ncols=1,
                             panel_in=2.56, marker_size=9.0)
    )  # fmt: skip
    green = (dotted[..., 1] > 0.5) & (dotted[..., 0] < 0.4) & (dotted[..., 2] < 0.4)
    rows, cols = np.nonzero(green)
    assert cols.mean() + 0.5 == pytest.approx((left + right) / 2, abs=1.0)
    assert rows.mean() + 0.5 == pytest.approx((top + bottom) / 2, abs=1.0)


# --- tour ---------------------------------------------------------------------------------------


def _registry_with_failure() -> SectionRegistry:
    registry = SectionRegistry()

    @registry.register("first", order=1, title="First part")
    def first(ctx):
        with ctx.step("work"):
            section = Section("First part").table([{"x": 1}])
        section.figure(new_figure(1, 1, dpi=20), "tiny", name="tiny")
        return section.record(answer=42, ratio=np.float32(0.5), bad=float("nan"))

    @registry.register("boom", order=2, title="Exploding part")
    def boom(ctx):
        raise ValueError("boom! <here>")

    @registry.register("last", order=3, title="Last part")
    def last(ctx):
        return Section("Last part").paragraph(f"seed {ctx.seed}, quick {ctx.quick}")

    return registry


def test_failing_section_is_reported_and_the_tour_signals_failure(tmp_path):
    with pytest.raises(TourFailed) as failure:
        run_tour(tmp_path, seed=3, registry=_registry_with_failure(), show_progress=False)
    assert failure.value.failed == ["boom"]
    html = (tmp_path / "report.html").read_text(encoding="utf-8")
    # Every section appears, in order; the failing one is marked with its traceback.
    assert html.index("First part") < html.index("Exploding part") < html.index("Last part")
    assert "FAILED" in html
    assert "ValueError: boom! &lt;here&gt;" in html
    assert "Traceback" in html
    assert "seed 3, quick True" in html
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["ok"] is False
    assert summary["failed"] == ["boom"]
    assert [s["status"] for s in summary["sections"].values()] == ["ok", "failed", "ok"]
    assert summary["sections"]["boom"]["error"] == "ValueError: boom! <here>"
    assert summary["sections"]["first"]["numbers"] == {"answer": 42, "ratio": 0.5, "bad": None}
    assert "first/work" in summary["timings"]
    assert (tmp_path / "figures" / "first-tiny.png").is_file()


def test_command_line_exit_codes(tmp_path, monkeypatch):
    from wherewhat import tour
    from wherewhat.report import tour as machinery

    monkeypatch.setattr(tour, "PAGE_MODULES", ())
    monkeypatch.setattr(machinery, "SECTIONS", _registry_with_failure())
    out = str(tmp_path / "cli")
    assert tour.main(["--out-dir", out, "--sections", "first", "last"]) == 0
    assert tour.main(["--out-dir", out]) == 1  # "boom" fails, report still written
    assert "Exploding part" in (tmp_path / "cli" / "report.html").read_text()
    assert tour.main(["--out-dir", out, "--sections", "nope"]) == 2


def test_trivial_tour_writes_report_and_summary(tmp_path):
    registry = SectionRegistry()

    @registry.register("hello", order=5)
    def hello(ctx):
        assert ctx.out_dir == tmp_path / "out"
        return Section("Hello").facts({"quick": ctx.quick}).record(n=1)

    path = run_tour(tmp_path / "out", quick=False, registry=registry, show_progress=False)
    assert path == tmp_path / "out" / "report.html"
    assert _parse(path).tags["dl"] == 1
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["ok"] is True and summary["quick"] is False
    assert summary["sections"]["hello"]["numbers"] == {"n": 1}
    assert summary["sections"]["hello"]["seconds"] >= 0
    assert summary["timings"]["hello"] == summary["sections"]["hello"]["seconds"]


def test_section_selection_and_wrong_return_type(tmp_path):
    registry = _registry_with_failure()

    @registry.register("wrong", order=4)
    def wrong(ctx):
        return "not a section"

    path = run_tour(tmp_path, sections=["last"], registry=registry, show_progress=False)
    assert "Last part" in path.read_text() and "First part" not in path.read_text()
    with pytest.raises(ConfigError, match="unknown tour section"):
        run_tour(tmp_path, sections=["nope"], registry=registry, show_progress=False)
    with pytest.raises(TourFailed):
        run_tour(tmp_path, sections=["wrong"], registry=registry, show_progress=False)
    assert "expected a wherewhat.report.html.Section" in path.read_text()


def test_registering_a_name_twice_is_an_error():
    registry = SectionRegistry()

    def one(ctx):
        return Section("a")

    def other(ctx):
        return Section("b")

    registry.register("a", order=1)(one)
    registry.register("a", order=1)(one)  # re-importing the same module is harmless
    with pytest.raises(ValueError, match="already registered"):
        registry.register("a", order=2)(other)


# --- preview and the built-in data section --------------------------------------------------------


def test_preview_faces_writes_a_grid_png(tmp_path):
    from wherewhat.report.preview import preview_dataset

    if not SHARED_FACES.is_dir():
        pytest.skip(f"real faces not found at {SHARED_FACES}")
    out = preview_dataset("faces68", SHARED_FACES / "afw", tmp_path / "p" / "faces.png", n=6)
    with Image.open(out) as png:
        assert png.format == "PNG"
        assert png.size[0] == 4 * 200  # 4 panels of 2 in at 100 dpi per row
        assert png.size[1] > 2 * 200  # 6 faces need two rows
    with pytest.raises(ConfigError, match="unknown dataset"):
        preview_dataset("nope", None, tmp_path / "x.png")


@pytest.mark.slow
def test_preview_scatter_and_data_section(tmp_path):
    from wherewhat.report.preview import preview_dataset

    out = preview_dataset("scatter", tmp_path / "cache", tmp_path / "scatter.png", n=4)
    with Image.open(out) as png:
        assert png.size[0] == 4 * 200
    import wherewhat.report.sections.data  # noqa: F401  (registers the page)

    path = run_tour(tmp_path / "tour", sections=["data"], show_progress=False)
    summary = json.loads((tmp_path / "tour" / "summary.json").read_text())
    assert summary["sections"]["data"]["numbers"]["scatter_test_scenes"] == 200
    assert _parse(path).tags["img"] >= 2


# --- judging numbers --------------------------------------------------------------------------


def test_checks_judge_this_run_or_the_benchmark_and_flag_misses():
    section = Section("Method").checks(
        [
            Check("speed", 12.0, benchmark=131.0, target=(">=", 100.0)),
            Check("probe", 0.24, benchmark=0.98, paper=0.979, target=(">=", 0.979),
                  judge_benchmark=True),
            Check("mse", 0.016, benchmark=0.013, target=("<=", 0.0121), judge_benchmark=True,
                  note="short run"),
            Check("knn", 0.3),  # no target: shown, not judged
        ]
    )  # fmt: skip
    assert section.flags == [
        "speed = 12 misses its target >= 100",
        "the benchmark's mse = 0.013 misses its target <= 0.0121 (short run)",
    ]
    html_text = section.render()
    assert html_text.count("MISSED") == 2 and "met by the benchmark" in html_text
    assert "2 flagged" in html_text


def test_flag_is_shown_counted_and_written_to_the_summary(tmp_path):
    registry = SectionRegistry()

    @registry.register("odd", order=1)
    def odd(ctx):
        return Section("Odd").flag("2 threads slower than 1")

    run_tour(tmp_path, registry=registry, show_progress=False)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["flagged"] == {"odd": 1}
    assert summary["sections"]["odd"]["flags"] == ["2 threads slower than 1"]
    page = (tmp_path / "report.html").read_text()
    assert "Look here:" in page and "1 flagged" in page


def test_more_threads_slower_is_flagged_per_backend_and_batch():
    from wherewhat.report.sections.bench import slower_with_more_threads

    def row(backend, threads, ms, batch=1):
        return {"backend": backend, "threads": threads, "median_ms": ms, "batch_size": batch}

    models = [{"name": "net", "speed": [row("torch", 1, 20.0), row("torch", 2, 200.0),
                                        row("onnxruntime", 1, 10.0), row("onnxruntime", 2, 6.0),
                                        row("torch", 1, 50.0, 32), row("torch", 2, 52.0, 32)]}]  # fmt: skip
    lines = slower_with_more_threads(models)
    assert len(lines) == 1 and lines[0].startswith("net in torch, batch 1: 2 threads take 200 ms")


def test_a_section_that_trains_gets_its_training_curves(tmp_path):
    from wherewhat.models.digits import DigitCNN
    from wherewhat.tasks.digits import DigitClassifierTask
    from wherewhat.training.fit import fit

    registry = SectionRegistry()

    @registry.register("learns", order=1)
    def learns(ctx):
        images, labels = torch.rand(16, 1, 28, 28), torch.arange(16) % 10
        loader = torch.utils.data.DataLoader(
            torch.utils.data.TensorDataset(images, labels), batch_size=8
        )
        fit(DigitClassifierTask(DigitCNN(channels=2, hidden=4)), train_loader=loader, max_steps=4)
        return Section("Learns")

    @registry.register("idle", order=2)
    def idle(ctx):
        return Section("Idle")

    run_tour(tmp_path, registry=registry, show_progress=False)
    assert sorted(p.name for p in (tmp_path / "figures").iterdir()) == [
        "learns-training-curves.png"
    ]


def test_benchmark_targets_reads_both_forms():
    from wherewhat.report.html import benchmark_targets

    result = {"targets": {"ap50": {"op": ">=", "value": 0.95}, "overhead": ["<=", 0.1]}}
    assert benchmark_targets(result) == {"ap50": (">=", 0.95), "overhead": ("<=", 0.1)}
    assert benchmark_targets(None) == {} and benchmark_targets({"targets": None}) == {}
