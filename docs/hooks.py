"""MkDocs hooks: the reference pages that come from the code, made at build time.

- ``<!-- generated: settings -->``: every field of ``BatchTasksSettings``
  (``batchtasks/core/conf.py``) with its default and its ``#:`` comment, read from the
  source (nothing imported).
- ``<!-- generated: cli -->``: ``manage.py batchtasks --help`` and each action's help.
- ``<!-- generated: openapi -->``: the operations of the app's OpenAPI document; the
  document itself is published as ``reference/openapi.json``.

The help and the document come from ``docs/generate.py``, run once per build.
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from functools import cache
from pathlib import Path
from typing import Any

from mkdocs.structure.files import File, Files

ROOT = Path(__file__).resolve().parent.parent
CONF = ROOT / "batchtasks" / "core" / "conf.py"
OPENAPI_PATH = "reference/openapi.json"
METHODS = ("get", "post", "put", "patch", "delete")


@cache
def _generated() -> dict[str, Any]:
    env = {**os.environ, "COLUMNS": "88", "DJANGO_SETTINGS_MODULE": "project.settings"}
    env.setdefault("DJANGO_DEBUG", "1")
    done = subprocess.run(
        [sys.executable, str(ROOT / "docs" / "generate.py")],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode:
        raise RuntimeError(f"docs/generate.py failed:\n{done.stderr}")
    return json.loads(done.stdout)


def _comment_above(lines: list[str], lineno: int) -> str:
    """The ``#:`` lines right above line ``lineno`` (1-based), joined."""
    found: list[str] = []
    index = lineno - 2
    while index >= 0 and lines[index].strip().startswith("#:"):
        found.insert(0, lines[index].strip()[2:].strip())
        index -= 1
    return " ".join(found)


def _default(value: ast.expr | None) -> str:
    if isinstance(value, ast.Call) and value.keywords:
        # field(default_factory=dict) and the like
        factory = ast.unparse(value.keywords[0].value)
        return {"dict": "{}", "list": "[]", "tuple": "()"}.get(factory, factory + "()")
    return "—" if value is None else ast.unparse(value)


def settings_table() -> str:
    source = CONF.read_text()
    lines = source.splitlines()
    tree = ast.parse(source)
    cls = next(
        node
        for node in tree.body
        if isinstance(node, ast.ClassDef) and node.name == "BatchTasksSettings"
    )
    rows = ["| key | type | default | meaning |", "|---|---|---|---|"]
    for node in cls.body:
        if not (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)):
            continue
        meaning = _comment_above(lines, node.lineno) or "See the key above."
        meaning = meaning.replace("|", "\\|")
        kind = ast.unparse(node.annotation).replace("|", "\\|")
        default = _default(node.value).replace("|", "\\|")
        rows.append(f"| `{node.target.id}` | `{kind}` | `{default}` | {meaning} |")
    return "\n".join(rows)


def cli_reference() -> str:
    parts = []
    for prog, text in _generated()["cli"].items():
        level = "##" if prog.count(" ") <= 2 else "###"
        parts.append(f"{level} `{prog}`\n\n```text\n{text.rstrip()}\n```\n")
    return "\n".join(parts)


def openapi_table() -> str:
    doc = _generated()["openapi"]
    server = doc["servers"][0]["url"].rstrip("/")
    rows = ["| method | path | what |", "|---|---|---|"]
    for path, item in doc["paths"].items():
        for method in METHODS:
            if method in item:
                summary = item[method].get("summary", "").replace("|", "\\|")
                rows.append(f"| `{method.upper()}` | `{server}{path}` | {summary} |")
    return "\n".join(rows)


MARKERS = {
    "<!-- generated: settings -->": settings_table,
    "<!-- generated: cli -->": cli_reference,
    "<!-- generated: openapi -->": openapi_table,
}


def on_files(files: Files, config: Any) -> Files:
    content = json.dumps(_generated()["openapi"], indent=2, sort_keys=True) + "\n"
    files.append(File.generated(config, OPENAPI_PATH, content=content))
    return files


def on_page_markdown(markdown: str, page: Any, config: Any, files: Files) -> str:
    for marker, make in MARKERS.items():
        if marker in markdown:
            markdown = markdown.replace(marker, make())
    return markdown
