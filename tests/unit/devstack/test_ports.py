"""`make run`'s ports: moved together by XSELL_DEV_PORT_OFFSET, each named when it is taken, printed in the banner."""

from pathlib import Path

import pytest

from devstack.__main__ import banner
from devstack.stack import (
    DEFAULT_METRICS_PORTS,
    DEFAULT_PORTS,
    PORT_OFFSET_VARIABLE,
    PORT_ROLES,
    Ports,
    PortsUnavailable,
    Stack,
    ports_taken_message,
)


def _all(ports: Ports) -> list[int]:
    return [port for port, _ in ports.roles()]


def test_without_the_variable_the_ports_are_the_documented_ones() -> None:
    ports = Ports.from_environment({})
    assert (ports.smtp, ports.nats, ports.gateway, ports.gateway_http) == (1025, 4222, 50051, 8080)
    assert _all(ports) == [*DEFAULT_PORTS.values(), *DEFAULT_METRICS_PORTS.values()]


def test_the_offset_moves_every_port_metrics_included() -> None:
    moved = Ports.from_environment({PORT_OFFSET_VARIABLE: "100"})
    assert _all(moved) == [port + 100 for port in _all(Ports.defaults())]
    assert moved.metrics["gateway"] == DEFAULT_METRICS_PORTS["gateway"] + 100


@pytest.mark.parametrize("value", ["ten", "-5", "1.5", "20000"])
def test_an_offset_that_is_not_a_usable_number_is_refused_naming_the_variable(value: str) -> None:
    with pytest.raises(PortsUnavailable, match=f"{PORT_OFFSET_VARIABLE}={value} is not a whole number from 0 to"):
        Ports.from_environment({PORT_OFFSET_VARIABLE: value})


def test_every_port_has_a_role_and_the_skipped_ones_are_left_out() -> None:
    assert set(PORT_ROLES) == set(DEFAULT_PORTS)
    roles = dict(Ports.defaults().roles(without={"smtp"}))
    assert 1025 not in roles and roles[4222] == "NATS, TLS" and roles[9462] == "the campaigns metrics"


def test_the_message_names_the_port_its_role_the_likely_cause_and_the_way_out() -> None:
    message = ports_taken_message([(1025, "the SMTP sink")])
    assert message.startswith("port 1025 (the SMTP sink) is already in use: another `make run` is probably running")
    assert f"{PORT_OFFSET_VARIABLE}=100 make run" in message and "\n" not in message


def test_a_whole_other_stack_is_one_line_with_a_count() -> None:
    taken = Ports.defaults().roles()
    message = ports_taken_message(taken)
    assert message.startswith(f"port 4222 (NATS, TLS) is already in use, and {len(taken) - 1} more of the stack's")
    assert "(1025, 2525, 8091, 8092, ...)" in message and "\n" not in message


def test_the_banner_shows_the_dashboard_and_the_cli_setting_when_the_ports_moved() -> None:
    usual = banner(Stack(var_dir=Path("var"), ports=Ports.defaults(), api_key="k"), Path("var"), 32 * 1024 * 1024)
    assert "http://127.0.0.1:8080/dashboard" in usual and "XSELL_GATEWAY" not in usual
    assert "the newest 32 MB per service" in usual
    moved = banner(Stack(var_dir=Path("var"), ports=Ports.defaults(100), api_key="k"), Path("var"), 0)
    assert "http://127.0.0.1:8180/dashboard" in moved and "export XSELL_GATEWAY=127.0.0.1:50151" in moved
