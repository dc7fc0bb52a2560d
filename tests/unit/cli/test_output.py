"""What the CLI prints for people."""

import io

from cli.output import money, table
from xsell.type.v1.money_pb2 import Money


def test_tables_align_columns_and_print_headers_alone_when_empty() -> None:
    out = io.StringIO()
    table(("KEY", "NAME"), [("cmp_1", "Lumpsum"), ("cmp_22", "SIP")], out)
    assert out.getvalue().splitlines() == ["KEY     NAME", "cmp_1   Lumpsum", "cmp_22  SIP"]
    empty = io.StringIO()
    table(("KEY", "NAME"), [], empty)
    assert empty.getvalue() == "KEY  NAME\n"


def test_money_reads_as_rupees_with_indian_grouping() -> None:
    assert money(Money(minor_units=2_500_000, currency_code="INR")) == "₹25,000"
    assert money(Money(minor_units=1_234_567_850, currency_code="INR")) == "₹1,23,45,678.50"
    assert money(Money(minor_units=-9_950, currency_code="INR")) == "-₹99.50"
    assert money(Money(minor_units=50, currency_code="INR")) == "₹0.50"
    assert money(Money(minor_units=1_250, currency_code="USD")) == "12.50 USD"
    assert money(Money()) == "-"
