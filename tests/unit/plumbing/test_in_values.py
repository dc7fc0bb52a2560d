"""in_values pads an expanding IN's values to a power of two, so a driver prepares a few statement texts, not one per
length; the padded list names the same set."""

from sqlalchemy import Column, Integer, MetaData, String, Table, bindparam, create_engine, select, update

from plumbing.db import in_values


def test_lengths_fall_on_powers_of_two_and_name_the_same_values() -> None:
    assert in_values([]) == []
    assert in_values([7]) == [7]
    assert in_values([1, 2, 3]) == [1, 2, 3, 3]
    assert len(in_values(list(range(513)))) == 1024
    assert {len(in_values(list(range(n)))) for n in range(1, 1001)} == {2**k for k in range(11)}
    for n in (1, 5, 200, 999):
        values = list(range(n))
        assert set(in_values(values)) == set(values)


def test_an_update_through_padded_values_changes_exactly_the_rows_named() -> None:
    metadata = MetaData()
    table = Table("t", metadata, Column("seq", Integer, primary_key=True), Column("state", String(10)))
    engine = create_engine("sqlite://")
    metadata.create_all(engine)
    mark = update(table).where(table.c.seq.in_(bindparam("seqs", expanding=True))).values(state="done")
    with engine.begin() as connection:
        connection.execute(table.insert(), [{"seq": n, "state": "waiting"} for n in range(1, 11)])
        result = connection.execute(mark, {"seqs": in_values([2, 3, 5])})
        assert result.rowcount == 3
        done = connection.execute(select(table.c.seq).where(table.c.state == "done")).scalars().all()
    assert done == [2, 3, 5]
