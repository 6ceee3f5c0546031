"""The supported-layer table, generated from the converter registry (the README embeds it)."""

from __future__ import annotations

from keydnn.frontends.keras.lower import IGNORED_AT_INFERENCE
from keydnn.frontends.keras.registry import CONVERTERS

__all__ = ["layer_table", "layer_table_markdown"]


def layer_table() -> list[dict[str, str]]:
    rows = [{"layer": name, "constraints": CONVERTERS[name].constraints} for name in sorted(CONVERTERS)]
    rows += [{"layer": name, "constraints": "identity at inference (no node)"} for name in sorted(IGNORED_AT_INFERENCE)]
    rows += _operation_rows()
    return sorted(rows, key=lambda r: r["layer"])


def _operation_rows() -> list[dict[str, str]]:
    """Keras 3 operations used as graph nodes, one row per converter (the classes it takes, by name)."""
    from keydnn.frontends.keras.convert_ops import OPERATIONS

    groups: dict[int, list[str]] = {}
    for name, entry in OPERATIONS.items():
        groups.setdefault(id(entry.fn), []).append(name)
    rows = []
    for names in groups.values():
        names = sorted(names)
        rows.append({"layer": "ops." + " / ops.".join(names),
                     "constraints": "Keras 3 operation node: " + OPERATIONS[names[0]].constraints})
    return rows


def layer_table_markdown() -> str:
    lines = ["| Keras layer | supported configuration |", "|---|---|"]
    lines += [f"| `{r['layer']}` | {r['constraints'] or '-'} |" for r in layer_table()]
    return "\n".join(lines) + "\n"
