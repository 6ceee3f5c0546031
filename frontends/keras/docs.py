"""The supported-layer table, generated from the converter registry (the README embeds it)."""

from __future__ import annotations

from keydnn.frontends.keras.lower import IGNORED_AT_INFERENCE
from keydnn.frontends.keras.registry import CONVERTERS

__all__ = ["layer_table", "layer_table_markdown"]


def layer_table() -> list[dict[str, str]]:
    rows = [{"layer": name, "constraints": CONVERTERS[name].constraints} for name in sorted(CONVERTERS)]
    rows += [{"layer": name, "constraints": "identity at inference (no node)"} for name in sorted(IGNORED_AT_INFERENCE)]
    return sorted(rows, key=lambda r: r["layer"])


def layer_table_markdown() -> str:
    lines = ["| Keras layer | supported configuration |", "|---|---|"]
    lines += [f"| `{r['layer']}` | {r['constraints'] or '-'} |" for r in layer_table()]
    return "\n".join(lines) + "\n"
