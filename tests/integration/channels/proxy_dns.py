"""A proxy.py plugin for the forward proxy of the HTTP client's tests: the proxy resolves names under `.test` (RFC 6761:
never a real domain) to 127.0.0.1, where the tests' provider servers listen, as a cluster's proxy resolves a
provider's public name. The client itself cannot resolve them, so a request that reaches such a server went through the
proxy."""

from proxy.http.proxy import HttpProxyBasePlugin


class TestDomains(HttpProxyBasePlugin):
    def resolve_dns(self, host: str, port: int) -> tuple[str | None, None]:
        return ("127.0.0.1" if host.endswith(".test") else None), None
