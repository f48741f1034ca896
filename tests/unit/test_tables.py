"""CLI tables (:mod:`broker.tables`): fit 80 and 100 columns with ids cut in the
middle, numbers right-aligned, ``wide`` cuts nothing. Rows are real Event ids of the
bundled alerts, decoded through the production code."""

from __future__ import annotations

import pytest

from broker.sources import decode
from broker.tables import Column, cell_width, cut_end, cut_middle, render
from tests.conftest import DATA

FILES = [DATA / "voevent/pygcn/gbm_flt_pos.xml", DATA / "igwn/userguide/MS181101ab-preliminary.json",
         DATA / "gcn/gcn-schema/gcn/notices/swift/bat/Guano.example.json",
         DATA / "ztf/fink-client/avro_multi_alerts_other.avro"]


@pytest.fixture(scope="module")
def rows() -> list[list[str]]:
    out = []
    for path in FILES:
        for ev in decode(path.read_bytes()):
            out.append([ev.time[:16], ev.id, ev.mission, ev.alert_type, f"{len(ev.id):,}"])
    return out


COLUMNS = [Column("T0"), Column("id", cut="middle"), Column("mission", cut="end"), Column("type", cut="end"),
           Column("n", right=True)]


@pytest.mark.parametrize("text, width, expect", [
    ("igwn:S230518h:preliminary:1", 40, "igwn:S230518h:preliminary:1"),
    ("igwn:S230518h:preliminary:1", 20, "igwn:S230…liminary:1"),
    ("S230518h-1-Preliminary", 12, "S2305…minary"),
    ("abc", 1, "…"),
    ("abc", 0, ""),
    ("観測観測観測", 7, "観…測"),  # wide characters take 2 cells
])
def test_cut_middle_keeps_head_and_tail(text, width, expect):
    got = cut_middle(text, width)
    assert got == expect and cell_width(got) <= max(width, 0)


def test_cut_end():
    assert cut_end("subsequent", 7) == "subseq…" and cut_end("abc", 5) == "abc"


@pytest.mark.parametrize("width", [80, 100])
def test_tables_fit_the_width_and_keep_id_ends(rows, width):
    text = render(COLUMNS, rows, width=width, order=[(2, 7), (3, 8), (1, 20)])
    lines = text.splitlines()
    assert len(lines) == len(rows) + 1
    assert max(cell_width(line) for line in lines) <= width
    for line, row in zip(lines[1:], rows):
        assert row[1][:4] in line and row[1][-4:] in line  # head and tail of the id
        assert line.endswith(row[4])  # the number column, right-aligned, ends the line


def test_wide_cuts_nothing(rows):
    text = render(COLUMNS, rows, width=40, wide=True)
    for line, row in zip(text.splitlines()[1:], rows):
        assert row[1] in line and "…" not in line


def test_numbers_are_right_aligned():
    text = render([Column("name"), Column("n", right=True)], [["a", "5"], ["b", "1,234"]], width=80)
    assert text.splitlines() == ["name      n", "a         5", "b     1,234"]


def test_width_from_columns_variable(monkeypatch, rows):
    monkeypatch.setenv("COLUMNS", "80")
    assert max(cell_width(line) for line in render(COLUMNS, rows).splitlines()) <= 80
