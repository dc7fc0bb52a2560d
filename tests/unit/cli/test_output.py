"""What the CLI prints for people."""

import io

from cli.output import table


def test_tables_align_columns_and_print_headers_alone_when_empty() -> None:
    out = io.StringIO()
    table(("KEY", "NAME"), [("cmp_1", "Lumpsum"), ("cmp_22", "SIP")], out)
    assert out.getvalue().splitlines() == ["KEY     NAME", "cmp_1   Lumpsum", "cmp_22  SIP"]
    empty = io.StringIO()
    table(("KEY", "NAME"), [], empty)
    assert empty.getvalue() == "KEY  NAME\n"
