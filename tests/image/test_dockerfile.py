"""The Dockerfile: hadolint passes, the runtime lock is the dev lock minus the dev tools, and the
builder's own RUN steps, run here in a fresh virtualenv, produce working entry points.

No container engine runs on these machines, so the builder stage is played
by a small interpreter of its instructions (ENV, WORKDIR, COPY from the
context, RUN) with every absolute path re-rooted under a temporary
directory. The commands are the Dockerfile's own, not a copy of them.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from falachefe_devstack import toolchain

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO / "Dockerfile"
HADOLINT = REPO / ".venv" / "bin" / "hadolint"
UV_VERSION = "0.13.8"


@dataclass
class Instruction:
    keyword: str
    flags: list[str]
    body: str


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[Instruction] = field(default_factory=list)


def parse_dockerfile(text: str) -> tuple[dict[str, str], list[Stage]]:
    """Global ARG defaults and the stages, with continuation lines joined and comments dropped."""
    logical: list[str] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if pending and line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        logical.append(pending + line)
        pending = ""
    args: dict[str, str] = {}
    stages: list[Stage] = []
    for line in logical:
        keyword, _, rest = line.partition(" ")
        keyword = keyword.upper()
        words = rest.split()
        flags = []
        while words and words[0].startswith("--"):
            flags.append(words.pop(0))
        body = " ".join(words) if flags else rest.strip()
        if keyword == "FROM":
            base, _, name = body.partition(" AS ")
            stages.append(Stage(base.strip(), name.strip() or None))
        elif not stages and keyword == "ARG":
            key, _, default = body.partition("=")
            args[key] = default
        else:
            stages[-1].instructions.append(Instruction(keyword, flags, body))
    return args, stages


def stage(stages: list[Stage], name: str | None) -> Stage:
    return next(s for s in stages if s.name == name)


def env_assignments(body: str) -> list[tuple[str, str]]:
    return [(key, value) for key, _, value in (word.partition("=") for word in shlex.split(body))]


def reroot(value: str, root: Path) -> str:
    """Absolute paths (and each absolute entry of a PATH-like list) move under ``root``."""
    return ":".join(str(root / part.lstrip("/")) if part.startswith("/") else part for part in value.split(":"))


def play_stage(build_stage: Stage, root: Path, env: dict[str, str]) -> dict[str, str]:
    """Run a stage's instructions under ``root``; returns the environment it ends with."""
    env = dict(env)
    cwd = root
    for instruction in build_stage.instructions:
        if instruction.keyword == "ENV":
            for key, value in env_assignments(instruction.body):
                env[key] = reroot(value, root).replace("$PATH", env.get("PATH", ""))
        elif instruction.keyword == "WORKDIR":
            cwd = root / instruction.body.lstrip("/")
            cwd.mkdir(parents=True, exist_ok=True)
        elif instruction.keyword == "COPY" and not any(f.startswith("--from=") for f in instruction.flags):
            *sources, destination = instruction.body.split()
            target = cwd / destination
            for source in sources:
                origin = REPO / source
                if origin.is_dir():
                    shutil.copytree(origin, target, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
                else:
                    target.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(origin, target / origin.name)
        elif instruction.keyword == "RUN":
            assert not re.search(r"(^|\s)/(?!dev/null)", instruction.body), (
                f"RUN uses an absolute path; use $VIRTUAL_ENV or WORKDIR-relative paths: {instruction.body}"
            )
            subprocess.run(["/bin/sh", "-ec", instruction.body], cwd=cwd, env=env, check=True, timeout=600)
    return env


# -- hadolint ------------------------------------------------------------------------------


def test_hadolint_passes_with_no_ignored_rule() -> None:
    """--disable-ignore-pragma: an inline `# hadolint ignore=` would not hide anything."""
    assert not (REPO / ".hadolint.yaml").exists(), "no rule is ignored by configuration either"
    result = subprocess.run(
        [str(HADOLINT), "--disable-ignore-pragma", "--format", "json", str(DOCKERFILE)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert json.loads(result.stdout) == []


def test_hadolint_really_lints(tmp_path: Path) -> None:
    """The linter runs and fails on what it should (an unpinned apt-get, root, :latest)."""
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM debian:latest\nRUN apt-get update && apt-get install -y curl\n")
    result = subprocess.run([str(HADOLINT), "--format", "json", str(bad)], capture_output=True, text=True, check=False)
    codes = {finding["code"] for finding in json.loads(result.stdout)}
    assert result.returncode != 0
    assert {"DL3007", "DL3008", "DL3009"} <= codes


# -- structure -----------------------------------------------------------------------------


def test_final_stage_is_slim_non_root_and_labelled() -> None:
    args, stages = parse_dockerfile(DOCKERFILE.read_text())
    final = stages[-1]
    assert final.base == stages[1].base == "${PYTHON_IMAGE}"
    assert args["PYTHON_IMAGE"].startswith("python:3.11-slim")
    keywords = [i.keyword for i in final.instructions]
    users = [i.body for i in final.instructions if i.keyword == "USER"]
    assert users == ["10001:10001"]
    assert keywords.index("USER") > max(i for i, k in enumerate(keywords) if k == "RUN")
    # Only the virtualenv comes from the builder: no uv, no compiler, no sources.
    copies = [(i.flags, i.body) for i in final.instructions if i.keyword == "COPY"]
    assert copies == [(["--from=builder"], "/opt/falachefe /opt/falachefe")]
    env = dict(kv for i in final.instructions if i.keyword == "ENV" for kv in env_assignments(i.body))
    assert env["PYTHONDONTWRITEBYTECODE"] == "1"
    assert env["HOME"].startswith("/tmp")
    labels = " ".join(i.body for i in final.instructions if i.keyword == "LABEL")
    for label in ("title", "description", "version", "revision", "licenses", "base.name"):
        assert f"org.opencontainers.image.{label}=" in labels
    assert "uninstall --yes --no-cache-dir pip setuptools wheel" in " ".join(
        i.body for i in final.instructions if i.keyword == "RUN"
    )


def test_build_context_is_an_allow_list_covering_every_copy() -> None:
    """.dockerignore starts from nothing (no .venv, .git or caches in the context) and lets in what COPY needs."""
    patterns = [line.strip() for line in (REPO / ".dockerignore").read_text().splitlines()]
    patterns = [p for p in patterns if p and not p.startswith("#")]
    assert patterns[0] == "*"
    allowed = {p.removeprefix("!").rstrip("/") for p in patterns[1:] if p.startswith("!")}
    _, stages = parse_dockerfile(DOCKERFILE.read_text())
    for build_stage in stages:
        for instruction in build_stage.instructions:
            if instruction.keyword == "COPY" and not instruction.flags:
                *sources, _ = instruction.body.split()
                assert set(sources) <= allowed, f"{sources} are excluded from the build context"


def _pins(lock: Path) -> dict[str, str]:
    return dict(re.findall(r"^([A-Za-z0-9_.\-]+)==(\S+)", lock.read_text(), re.M))


def _names(requirements: list[str]) -> set[str]:
    return {re.split(r"[<>=!~\[ ;]", r, maxsplit=1)[0].lower().replace("_", "-") for r in requirements}


def test_runtime_lock_is_the_dev_lock_without_the_dev_tools() -> None:
    runtime = _pins(REPO / "requirements-runtime.lock")
    dev = _pins(REPO / "requirements.lock")
    assert {name: (version, dev.get(name)) for name, version in runtime.items() if dev.get(name) != version} == {}
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert not _names(project["optional-dependencies"]["dev"]) & set(runtime), "a dev tool is in the image's lock"
    for name in _names(project["dependencies"]):
        assert name in runtime, f"{name} (a [project] dependency) is missing from requirements-runtime.lock"


# -- the builder's steps, for real ------------------------------------------------------------


@pytest.fixture(scope="module")
def image_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The builder stage played under a temporary root, then the final stage's environment."""
    uv = toolchain.cache_root() / f"uv-{UV_VERSION}" / "bin" / "uv"
    if not uv.exists():
        pytest.fail(f"uv {UV_VERSION} is installed by scripts/bootstrap.sh at {uv}")
    args, stages = parse_dockerfile(DOCKERFILE.read_text())
    assert args["UV_IMAGE"].endswith(f":{UV_VERSION}"), "the image's uv is the one the tests run"
    root = tmp_path_factory.mktemp("image")
    host_env = {k: v for k, v in os.environ.items() if not k.startswith(("VIRTUAL_ENV", "UV_", "PYTHON"))}
    host_env["PATH"] = f"{uv.parent}:{host_env['PATH']}"
    # The Dockerfile mounts a cache at build time; here the warm one of the test machine.
    host_env["UV_CACHE_DIR"] = str(toolchain.cache_root() / "uv-cache")
    play_stage(stage(stages, "builder"), root, host_env)
    return root


def _final_env(image_root: Path) -> dict[str, str]:
    """The final stage's ENV (re-rooted) over a bare PATH: only the virtualenv's programs are found."""
    _, stages = parse_dockerfile(DOCKERFILE.read_text())
    env = {"PATH": "/usr/bin:/bin"}
    for instruction in stages[-1].instructions:
        if instruction.keyword == "ENV":
            for key, value in env_assignments(instruction.body):
                env[key] = reroot(value, image_root).replace("$PATH", env["PATH"])
    Path(env["HOME"]).mkdir(parents=True, exist_ok=True)
    return env


def _entrypoint() -> list[str]:
    _, stages = parse_dockerfile(DOCKERFILE.read_text())
    (entrypoint,) = [i.body for i in stages[-1].instructions if i.keyword == "ENTRYPOINT"]
    return list(json.loads(entrypoint))


@pytest.mark.slow
@pytest.mark.parametrize(
    "argv",
    [
        ["operator", "--help"],
        ["runtime", "--help"],
        ["runtime", "worker", "--help"],
        ["runtime", "migrate", "--help"],
        ["falachefe-operator", "--help"],
    ],
    ids=" ".join,
)
def test_entrypoint_runs_each_program(image_root: Path, argv: list[str]) -> None:
    result = subprocess.run(
        [*_entrypoint(), *argv], env=_final_env(image_root), capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "usage" in result.stdout.lower()


@pytest.mark.slow
def test_entrypoint_refuses_an_unknown_program(image_root: Path) -> None:
    result = subprocess.run(
        [*_entrypoint(), "bash"], env=_final_env(image_root), capture_output=True, text=True, timeout=30, check=False
    )
    assert result.returncode == 64
    assert "usage: falachefe operator [ARGS...] | falachefe runtime [ARGS...]" in result.stderr


@pytest.mark.slow
def test_virtualenv_holds_the_programs_and_no_dev_or_build_tools(image_root: Path) -> None:
    venv = image_root / "opt" / "falachefe"
    assert (venv / "bin" / "falachefe-operator").exists()
    assert (venv / "bin" / "falachefe-runtime").exists()
    # (uv itself is there: crewai depends on it.)
    for tool in ("pip", "pytest", "ruff", "mypy", "hadolint"):
        assert not (venv / "bin" / tool).exists(), f"{tool} must not be in the image's virtualenv"
    python = venv / "bin" / "python"
    probe = "import importlib.util as u; print([m for m in ('pytest', 'mypy', 'setuptools') if u.find_spec(m)])"
    out = subprocess.run([str(python), "-c", probe], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


@pytest.mark.slow
def test_wheel_carries_every_file_of_the_packages(image_root: Path) -> None:
    """Package data (SQL migrations, templates) must reach the image, not only the .py files."""
    site = next((image_root / "opt" / "falachefe" / "lib").glob("python3.*/site-packages"))
    for source_root in (REPO / "operator", REPO / "runtime"):
        for path in source_root.rglob("*"):
            if path.is_dir() or "__pycache__" in path.parts or ".egg-info" in str(path):
                continue
            relative = path.relative_to(source_root)
            assert (site / relative).exists(), f"{relative} is not in the installed wheel"
