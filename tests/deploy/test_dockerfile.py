"""The Dockerfile's structure (no Docker engine here to build it): multi-stage, slim, non-root, no dev tooling at run
time, and the PYTHONPATH and uid the manifests rely on."""

import re
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
MANIFEST_UID = 10001


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def all(self, keyword: str) -> list[str]:
        return [argument for instruction, argument in self.instructions if instruction == keyword]


def parse(text: str) -> tuple[dict[str, str], list[Stage]]:
    """Global ARG defaults and the stages, with continuation lines joined and comments dropped."""
    joined = re.sub(r"\\\n", " ", "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#")))
    args: dict[str, str] = {}
    stages: list[Stage] = []
    for line in joined.splitlines():
        if not line.strip():
            continue
        instruction, _, argument = line.strip().partition(" ")
        instruction, argument = instruction.upper(), argument.strip()
        if instruction == "FROM":
            match = re.fullmatch(r"(\S+)(?:\s+AS\s+(\S+))?", argument, re.IGNORECASE)
            assert match, f"unreadable FROM {argument}"
            base = re.sub(r"\$\{(\w+)\}", lambda m: args.get(m.group(1), m.group(0)), match.group(1))
            stages.append(Stage(base, match.group(2)))
        elif not stages and instruction == "ARG":
            key, _, default = argument.partition("=")
            args[key] = default
        elif stages:
            stages[-1].instructions.append((instruction, argument))
    return args, stages


def final_stage_problems(text: str) -> list[str]:
    _, stages = parse(text)
    problems: list[str] = []
    if len(stages) < 2:
        return [f"{len(stages)} stage(s): the stubs must be generated in a builder stage"]
    final = stages[-1]
    if not re.fullmatch(r"python:3\.11(\.\d+)?-slim(-\w+)?(@sha256:[0-9a-f]+)?", final.base):
        problems.append(f"the final stage is based on {final.base}, not python:3.11-slim")
    users = final.all("USER")
    if not users:
        problems.append("the final stage sets no USER: it runs as root")
    else:
        user = users[-1].split(":")[0]
        if not user.isdigit() or int(user) == 0:
            problems.append(f"the final USER is {users[-1]}; it must be a fixed non-zero uid")
        elif int(user) != MANIFEST_UID:
            problems.append(f"the final USER is {user}; the manifests run as {MANIFEST_UID}")
    body = " ".join(argument for _, argument in final.instructions)
    for dev_only in ("requirements-dev", "grpcio-tools", "mypy-protobuf", "pytest", "/opt/codegen", "protos"):
        if dev_only in body:
            problems.append(f"the final stage brings in {dev_only}")
    if any("pip install" in run for run in final.all("RUN")):
        problems.append("the final stage installs packages; it should copy the builder's venv")
    copies_from_builder = [c for c in final.all("COPY") if c.startswith("--from=")]
    if not any("/opt/venv" in c for c in copies_from_builder) or not any("gen" in c for c in copies_from_builder):
        problems.append("the final stage does not copy the runtime venv and the generated stubs from the builder")
    env = " ".join(final.all("ENV"))
    if not re.search(r"PYTHONPATH=/app:/app/gen\b", env):
        problems.append("PYTHONPATH does not include the app root and gen/")
    return problems


def test_the_dockerfile_is_multi_stage_slim_and_non_root() -> None:
    text = (ROOT / "Dockerfile").read_text()
    _, stages = parse(text)
    assert final_stage_problems(text) == []
    builder = stages[0]
    assert any("requirements.txt" in run for run in builder.all("RUN"))
    assert any("gen_protos.py" in run for run in builder.all("RUN"))


def test_the_image_context_leaves_out_local_state() -> None:
    ignored = set((ROOT / ".dockerignore").read_text().split())
    assert {".git", ".venv", "var", "gen", "tests"} <= ignored


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        ("USER 10001:10001\n", "", "the final stage sets no USER: it runs as root"),
        ("USER 10001:10001\n", "USER root\n", "the final USER is root; it must be a fixed non-zero uid"),
        (
            "COPY --from=builder /opt/venv /opt/venv\n",
            "COPY requirements-dev.txt .\nRUN pip install -r requirements-dev.txt\n",
            "the final stage brings in requirements-dev",
        ),
        (
            "FROM ${PYTHON_IMAGE}\n",
            "FROM python:3.11\n",
            "the final stage is based on python:3.11, not python:3.11-slim",
        ),
    ],
)
def test_a_broken_dockerfile_is_caught(old: str, new: str, expected: str) -> None:
    text = (ROOT / "Dockerfile").read_text()
    assert text.count(old) == 1
    assert expected in final_stage_problems(text.replace(old, new))
