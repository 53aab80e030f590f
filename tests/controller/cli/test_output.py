from __future__ import annotations

from controller.cli.output import table


def test_table_pads_columns_to_the_widest_cell_and_shows_none_as_blank() -> None:
    text = table(["ID", "NAME", "IP"], [["a1", "web-1", "10.77.0.5"], ["b22222", None, "-"]])
    assert text.splitlines() == [
        "ID      NAME   IP",
        "a1      web-1  10.77.0.5",
        "b22222         -",
    ]


def test_table_with_no_rows_is_just_the_header() -> None:
    assert table(["NAME", "TYPE"], []) == "NAME  TYPE"
