"""Generated documentation stays in sync: README tables and the published artifact schema.

Regenerate with ``KEYDNN_UPDATE_GOLDENS=1 pytest tests/test_docs.py`` (the same switch as the goldens).
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

from keydnn.backends.artifact import artifact_json_schema
from keydnn.frontends.keras.docs import layer_table_markdown
from keydnn.ir.passes import DEFAULT_PIPELINE

ROOT = Path(__file__).resolve().parents[1]
UPDATE = os.environ.get("KEYDNN_UPDATE_GOLDENS") == "1"


def _section(text: str, name: str) -> str:
    m = re.search(rf"<!-- {name}:start -->\n(.*?)<!-- {name}:end -->", text, re.S)
    assert m, f"README has no {name} section"
    return m.group(1)


def _sync(name: str, content: str) -> None:
    readme = ROOT / "README.md"
    text = readme.read_text()
    if UPDATE:
        text = re.sub(rf"(<!-- {name}:start -->\n).*?(<!-- {name}:end -->)", lambda m: m.group(1) + content + m.group(2),
                      text, flags=re.S)
        readme.write_text(text)
    assert _section(readme.read_text(), name) == content, f"README {name} section is stale; set KEYDNN_UPDATE_GOLDENS=1"


def test_readme_layer_table_is_generated_from_the_converter_table():
    _sync("layers", layer_table_markdown())


def test_readme_lists_the_default_pipeline():
    _sync("pipeline", "```\n" + DEFAULT_PIPELINE.replace(",", ",\n") + "\n```\n")


def test_published_schema_matches_the_pydantic_models():
    path = ROOT / "keydnn" / "schema" / "artifact-v1.json"
    generated = json.dumps(artifact_json_schema(), indent=2, sort_keys=True) + "\n"
    if UPDATE:
        path.write_text(generated)
    assert path.read_text() == generated, "published schema is stale; set KEYDNN_UPDATE_GOLDENS=1"


def test_readme_starts_with_the_two_commands_ci_runs():
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    commands = re.findall(r"^(pip install .*)$", readme, re.M)[:2]
    assert commands[0] == "pip install . && python examples/quickstart.py"
    assert commands[1] == 'pip install -e ".[dev]" && python -m pytest -q'
    assert 'python -m pip install -q -e ".[dev]" && python -m pytest -q' in ci
    assert "python examples/quickstart.py" in ci
