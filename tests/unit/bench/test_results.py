"""What the bench process does around a timed block."""

import gc

import pytest

from bench.results import collector_paused


def test_the_collector_is_paused_for_the_timed_block_and_back_after_it_even_when_the_block_fails() -> None:
    assert gc.isenabled()
    with collector_paused():
        assert not gc.isenabled()
    assert gc.isenabled()
    with pytest.raises(RuntimeError), collector_paused():
        raise RuntimeError("the service failed")
    assert gc.isenabled()
