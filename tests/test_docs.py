"""The user docs (README.md, docs/*.md) checked against the code, where a machine can check them.
Fast: no Ray is started; the only subprocesses are `python -m MODULE --help`, once per module.

- Routes and error codes: every route table (a table whose first header cell is "route") of
  README.md and docs/api.md lists exactly serve_app.api's ENDPOINTS, and every error table (a
  table with "status" and "error" or "code" header cells) of README.md, docs/api.md and
  docs/client.md lists exactly its ERROR_CODES, status by status. A route added in the code must
  be added to those tables: the code is the source.
- Every "OpenAPI X.Y" in the docs is the version serve_app's generated document states.
- Fenced command blocks (```bash, ```sh, ```console, ```shell): every `make TARGET` names a
  Makefile target and every `NAME=value` given to make a Makefile variable; every
  `python -m MODULE` of this project names a runnable module whose `--help` (or its
  subcommand's) lists each `--flag` the command passes; `pytest -m EXPR` uses declared markers.
- Configuration keys: `args.X`, `user_config.X`, `autoscaling_config.X`, `ray_actor_options.X`
  and `http_options.X` anywhere in the docs name keys of serve_app.config (AppArgs,
  ModelConfig), config.yaml or Serve's own schema. After a line `<!-- check: config-keys -->`,
  every backticked snake_case word of the next paragraph or table (up to a blank line) must be
  such a key too.
- Query parameters written `name=value` in backticks (README.md, docs/api.md, docs/explain.md)
  are fields of the routes' query models.
- Links: every relative Markdown link (and image) in README.md, CHANGELOG.md, docs/**/*.md and
  bench/results/README.md resolves to a file in the repository, and its #anchor to a heading
  of that file; every repository path written in backticks in the user docs exists.
"""

from __future__ import annotations

import functools
import importlib
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
USER_DOCS = sorted([ROOT / "README.md", *(ROOT / "docs").glob("*.md")])
ALL_MARKDOWN = sorted(
    {
        *USER_DOCS,
        *(ROOT / "docs").rglob("*.md"),
        *[
            p
            for p in (ROOT / "CHANGELOG.md", ROOT / "bench" / "results" / "README.md")
            if p.exists()
        ],
    }
)
ROUTE_DOCS = ["README.md", "docs/api.md"]
ERROR_DOCS = ["README.md", "docs/api.md", "docs/client.md"]
QUERY_DOCS = ["README.md", "docs/api.md", "docs/explain.md"]
PROJECT_PACKAGES = {"train_job", "serve_app", "model_store", "bench", "local_cluster"}
REPO_DIRS = ("serve_app/", "train_job/", "model_store/", "bench/", "tests/", "kuberay/")
REPO_DIRS += ("local_cluster/", "docs/", ".ci/")


def rel(path: Path) -> str:
    return str(path.relative_to(ROOT))


def ids(paths: list[Path]) -> list[str]:
    return [rel(p) for p in paths]


# ---- Markdown parsing ---------------------------------------------------------------------------


def without_fences(text: str) -> str:
    """The text with fenced blocks blanked (their lines kept, so line numbers stay right)."""
    out, fenced = [], False
    for line in text.splitlines():
        if line.lstrip().startswith("```"):
            fenced = not fenced
            out.append("")
            continue
        out.append("" if fenced else line)
    return "\n".join(out)


def tables(text: str) -> list[tuple[list[str], list[list[str]]]]:
    """Every pipe table outside fenced blocks: (header cells, body rows of cells)."""
    found, block = [], []
    for line in [*without_fences(text).splitlines(), ""]:
        if line.strip().startswith("|"):
            block.append(line)
            continue
        if len(block) >= 2 and re.fullmatch(r"[\s|:-]+", block[1]):
            cells = [_cells(row) for row in block]
            found.append((cells[0], cells[2:]))
        block = []
    return found


def _cells(row: str) -> list[str]:
    row = row.strip().removeprefix("|").removesuffix("|")
    return [c.strip() for c in re.split(r"(?<!\\)\|", row)]


def fenced_commands(text: str) -> list[str]:
    """Shell commands of fenced bash/sh/console/shell blocks, continuation lines joined,
    comments and prompts dropped."""
    commands, lang, joined = [], None, ""
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("```"):
            lang = None if lang is not None else (stripped[3:].strip().lower() or "text")
            continue
        if lang not in ("bash", "sh", "console", "shell"):
            continue
        line = re.sub(r"(^|\s)#.*$", "", line).rstrip()
        line = re.sub(r"^\s*\$ ", "", line)
        joined += line
        if joined.endswith("\\"):
            joined = joined[:-1] + " "
            continue
        if joined.strip():
            commands.append(joined.strip())
        joined = ""
    return commands


def words(command: str) -> list[str]:
    try:
        return shlex.split(command)
    except ValueError:  # an unbalanced quote in prose-like usage
        return command.split()


def backticked(text: str) -> list[str]:
    return re.findall(r"`([^`\n]+)`", without_fences(text))


# ---- what the code says -------------------------------------------------------------------------


def _api_module():
    """serve_app's typed API (ENDPOINTS, ERROR_CODES): serve_app.api, or serve_app.api.schema
    when api is a package."""
    module = importlib.import_module("serve_app.api")
    if not hasattr(module, "ENDPOINTS"):
        module = importlib.import_module("serve_app.api.schema")
    return module


def _openapi_version() -> str:
    from serve_app.config import AppArgs

    for name in ("serve_app.openapi", "serve_app.api.openapi", "serve_app.api"):
        try:
            module = importlib.import_module(name)
        except ImportError:
            continue
        if hasattr(module, "openapi_spec"):
            return module.openapi_spec(AppArgs())["openapi"]
    raise AssertionError("no openapi_spec found in serve_app")


@functools.cache
def config_keys() -> frozenset[str]:
    """Every key a Serve config of this project may hold: serve_app.config's models, every key
    in config.yaml, config.gpu.yaml and the RayService's serveConfigV2, and Serve's own schema
    (application, deployment, autoscaling, actor options, HTTP options)."""
    from ray.serve.config import AutoscalingConfig
    from ray.serve.schema import (
        DeploymentSchema,
        HTTPOptionsSchema,
        RayActorOptionsSchema,
        ServeApplicationSchema,
        ServeDeploySchema,
    )

    from serve_app.config import AppArgs, ModelConfig

    keys: set[str] = set()
    for model in (AppArgs, ModelConfig, AutoscalingConfig, DeploymentSchema, RayActorOptionsSchema):
        keys |= set(model.model_fields)
    for model in (HTTPOptionsSchema, ServeApplicationSchema, ServeDeploySchema):
        keys |= set(model.model_fields)

    def walk(node):
        if isinstance(node, dict):
            for k, v in node.items():
                keys.add(str(k))
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    for name in ("config.yaml", "config.gpu.yaml"):
        walk(yaml.safe_load((ROOT / name).read_text()))
    service = yaml.safe_load((ROOT / "kuberay" / "rayservice.yaml").read_text())
    walk(yaml.safe_load(service["spec"]["serveConfigV2"]))
    return frozenset(keys)


@functools.cache
def makefile() -> tuple[frozenset[str], str]:
    text = (ROOT / "Makefile").read_text()
    targets = set(re.findall(r"^([A-Za-z0-9_.-]+)\s*:(?!=)", text, re.M))
    return frozenset(targets), text


@functools.cache
def help_text(module: str, subcommand: str | None) -> str:
    """`python -m MODULE [SUBCOMMAND] --help`; fails the test when the module does not run."""
    argv = [sys.executable, "-m", module, *([subcommand] if subcommand else []), "--help"]
    done = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=120)
    if done.returncode != 0 and subcommand is None:
        raise AssertionError(f"`python -m {module} --help` failed: {done.stderr[-800:]}")
    return done.stdout if done.returncode == 0 else ""


# ---- (a) routes and error codes ------------------------------------------------------------------

ROUTE = re.compile(r"\b(GET|POST|PUT|PATCH|DELETE)\s+(/[^\s`,;]*)")


def documented_routes(text: str) -> set[tuple[str, str]]:
    routes: set[tuple[str, str]] = set()
    for header, rows in tables(text):
        if header and header[0].lower().strip("* ") == "route":
            for row in rows:
                for code in re.findall(r"`([^`]+)`", row[0]):
                    routes |= set(ROUTE.findall(code))
    return routes


def documented_errors(text: str) -> dict[int, set[str]]:
    errors: dict[int, set[str]] = {}
    for header, rows in tables(text):
        names = [h.lower().strip("* ") for h in header]
        if "status" not in names or not ({"error", "code"} & set(names)):
            continue
        status_at = names.index("status")
        code_at = names.index("error") if "error" in names else names.index("code")
        for row in rows:
            status = re.match(r"\d{3}", row[status_at])
            if status:
                codes = re.findall(r"`([a-z_]+)`", row[code_at])
                errors.setdefault(int(status.group()), set()).update(codes)
    return errors


@pytest.mark.parametrize("doc", ROUTE_DOCS)
def test_route_tables_list_exactly_the_routes_of_the_code(doc):
    text = (ROOT / doc).read_text()
    documented = documented_routes(text)
    assert documented, f"{doc}: no route table (a table whose first header cell is 'route')"
    code = {(e.method, e.path) for e in _api_module().ENDPOINTS}
    assert documented == code, (
        f"{doc}: routes in the code but not in the table: {sorted(code - documented)}; "
        f"in the table but not in the code: {sorted(documented - code)}"
    )


@pytest.mark.parametrize("doc", ERROR_DOCS)
def test_error_tables_list_exactly_the_error_codes_of_the_code(doc):
    documented = documented_errors((ROOT / doc).read_text())
    assert documented, f"{doc}: no error table (header cells 'status' and 'error' or 'code')"
    code = {status: set(codes) for status, codes in _api_module().ERROR_CODES.items()}
    problems = [
        f"{status}: missing {sorted(code.get(status, set()) - documented.get(status, set()))}, "
        f"not in the code {sorted(documented.get(status, set()) - code.get(status, set()))}"
        for status in sorted(code.keys() | documented.keys())
        if code.get(status, set()) != documented.get(status, set())
    ]
    assert not problems, f"{doc}: error table differs from ERROR_CODES: " + "; ".join(problems)


# ---- (b) the OpenAPI version ----------------------------------------------------------------------


@pytest.mark.parametrize("doc", ids(USER_DOCS))
def test_openapi_version_is_the_generated_one(doc):
    actual = _openapi_version()
    stated = re.findall(r"OpenAPI\s+(\d+(?:\.\d+)+)", (ROOT / doc).read_text())
    wrong = [v for v in stated if actual.split(".")[: len(v.split("."))] != v.split(".")]
    assert not wrong, f"{doc} states OpenAPI {wrong}; serve_app generates OpenAPI {actual}"


def test_the_api_docs_state_the_openapi_version():
    assert re.search(r"OpenAPI\s+\d", (ROOT / "docs/api.md").read_text())


# ---- (c) commands in fenced blocks ----------------------------------------------------------------


SEPARATORS = ("&&", "||", ";", "|")


def make_problems(command: str) -> list[str]:
    targets, text = makefile()
    tokens = words(command)
    problems = []
    for i, token in enumerate(tokens):
        at_command = i == 0 or tokens[i - 1] in SEPARATORS or tokens[i - 2 : i - 1] == ["flock"]
        if token != "make" or not at_command:
            continue
        for arg in tokens[i + 1 :]:
            if arg in SEPARATORS:
                break
            if arg.startswith("-"):
                continue
            if "=" in arg:
                name = arg.split("=", 1)[0]
                if not re.search(rf"\$\({re.escape(name)}\)", text):
                    problems.append(f"`{command}`: the Makefile has no variable {name}")
            elif arg not in targets:
                problems.append(f"`{command}`: the Makefile has no target {arg!r}")
    return problems


def python_module_calls(command: str) -> list[tuple[str, str | None, list[str]]]:
    """(module, first positional argument, --flags) of each `python -m MODULE` of this
    project in the command; flags inside quoted strings (another command's) are not its own."""
    tokens = words(command)
    calls = []
    for i, token in enumerate(tokens[:-2]):
        if not re.search(r"(^|/)python3?$", token) or tokens[i + 1] != "-m":
            continue
        module = tokens[i + 2]
        if module.split(".")[0] not in PROJECT_PACKAGES:
            continue
        args = []
        for arg in tokens[i + 3 :]:
            if arg in SEPARATORS or arg.startswith((">", "2>")):
                break
            args.append(arg.strip("[]"))
        flags = [a.split("=", 1)[0] for a in args if re.fullmatch(r"--[a-z][\w-]*(=\S*)?", a)]
        positional = next((a for a in args if re.fullmatch(r"[a-z][a-z-]*", a)), None)
        calls.append((module, positional, flags))
    return calls


def command_problems(doc: Path) -> list[str]:
    problems = []
    for command in fenced_commands(doc.read_text()):
        problems += make_problems(command)
        for module, positional, flags in python_module_calls(command):
            helps = help_text(module, None)
            if positional and flags:
                helps += help_text(module, positional)
            for flag in flags:
                if not re.search(rf"(?<![\w-]){re.escape(flag)}(?![\w-])", helps):
                    problems.append(f"`{command}`: python -m {module} has no option {flag}")
        marker = re.search(r"pytest\b.*?\s-m\s+(\"[^\"]+\"|'[^']+'|\S+)", command)
        if marker:
            declared = set(re.findall(r'^\s*"(\w+):', (ROOT / "pyproject.toml").read_text(), re.M))
            for name in re.findall(r"\w+", marker.group(1).strip("'\"")):
                if name not in {"not", "and", "or"} and name not in declared:
                    problems.append(f"`{command}`: no pytest marker {name!r} in pyproject.toml")
    return problems


@pytest.mark.parametrize("doc", ids(USER_DOCS))
def test_commands_in_fenced_blocks_exist(doc):
    problems = command_problems(ROOT / doc)
    assert not problems, f"{doc}:\n  " + "\n  ".join(problems)


# ---- (d) configuration keys and query parameters -----------------------------------------------

KEY_REF = re.compile(
    r"\b(?:args|user_config|autoscaling_config|ray_actor_options|http_options)\.([a-z][a-z0-9_]*)"
)
SNAKE = re.compile(r"[a-z][a-z0-9]*(?:_[a-z0-9]+)+")


def config_key_problems(text: str) -> list[str]:
    keys = config_keys()
    problems = []
    for code in backticked(text):
        for key in KEY_REF.findall(code):
            if key not in keys:
                problems.append(f"`{code}`: no config key {key!r}")
    checking = False
    for line in without_fences(text).splitlines():
        if not line.strip():
            checking = False
        if "<!-- check: config-keys -->" in line:
            checking = True
            continue
        if checking:
            for code in re.findall(r"`([^`]+)`", line):
                head = re.split(r"[:=\s]", code, maxsplit=1)[0]
                if SNAKE.fullmatch(head) and head not in keys:
                    problems.append(f"`{code}` (config-keys paragraph): no config key {head!r}")
    return problems


@pytest.mark.parametrize("doc", ids(USER_DOCS))
def test_config_keys_named_in_the_docs_exist(doc):
    problems = config_key_problems((ROOT / doc).read_text())
    assert not problems, f"{doc}:\n  " + "\n  ".join(problems)


@pytest.mark.parametrize("doc", QUERY_DOCS)
def test_query_parameters_named_in_the_docs_exist(doc):
    api = _api_module()
    fields = {name for e in api.ENDPOINTS if e.query for name in e.query.model_fields}
    used = {
        m.group(1)
        for code in backticked((ROOT / doc).read_text())
        for m in re.finditer(r"(?:^|[?&])([a-z][a-z_]*)=", code)
    }
    assert used, f"{doc}: no query parameter named"
    assert used <= fields, f"{doc}: not query parameters of any route: {sorted(used - fields)}"


# ---- (e) links and paths ------------------------------------------------------------------------


def slug(heading: str) -> str:
    """GitHub's anchor of a Markdown heading."""
    heading = re.sub(r"[`*_]|<[^>]+>", "", heading.strip().lower())
    heading = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)
    return re.sub(r"[^\w\- ]", "", heading).replace(" ", "-")


@functools.cache
def anchors(path: Path) -> frozenset[str]:
    text = without_fences(path.read_text())
    return frozenset(slug(m) for m in re.findall(r"^#{1,6}\s+(.+?)\s*#*$", text, re.M))


def link_problems(doc: Path) -> list[str]:
    problems = []
    for target in re.findall(r"!?\[[^\]]*\]\(([^)\s]+)\)", without_fences(doc.read_text())):
        if re.match(r"[a-z]+:", target) or target.startswith("//"):
            continue  # http(s), mailto
        file_part, _, anchor = target.partition("#")
        path = (doc.parent / file_part).resolve() if file_part else doc
        if not path.exists():
            problems.append(f"({target}): no such file")
        elif not path.is_relative_to(ROOT):
            problems.append(f"({target}): outside the repository")
        elif anchor and path.suffix == ".md" and anchor not in anchors(path):
            problems.append(f"({target}): {rel(path)} has no heading #{anchor}")
    return problems


@pytest.mark.parametrize("doc", ids(ALL_MARKDOWN))
def test_links_resolve(doc):
    problems = link_problems(ROOT / doc)
    assert not problems, f"{doc}: " + "; ".join(problems)


def path_problems(doc: Path) -> list[str]:
    problems = []
    for code in backticked(doc.read_text()):
        for token in code.split():
            token = token.strip("(),;:'\"").split("::")[0]
            if not token.startswith(REPO_DIRS) or re.search(r"[<>{}*$|\[\]]|\.\.\.", token):
                continue
            if not (ROOT / token).exists():
                problems.append(f"`{token}`")
    return problems


@pytest.mark.parametrize("doc", ids(USER_DOCS))
def test_repository_paths_in_backticks_exist(doc):
    problems = path_problems(ROOT / doc)
    assert not problems, f"{doc} names paths the repository does not have: " + ", ".join(problems)
