"""The one deterministic text form of a graph (``str(graph)``).

Used by ``keydnn inspect-ir`` and compared by golden tests, so it shows no
memory ids, no weight values (only shape and a short checksum), and nothing
whose order depends on a dict: attributes follow the op's declared field order.
"""

from __future__ import annotations

from typing import Any

from keydnn.ir.graph import Graph, Node

__all__ = ["print_graph", "format_node", "format_attrs"]


def _fmt(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(_fmt(v) for v in value) + "]"
    if isinstance(value, dict):
        kind = value.get("kind")
        inner = format_attrs({k: v for k, v in value.items() if k != "kind"})
        return f"{kind}{inner}" if kind else inner
    if isinstance(value, str):
        return value if value.replace("_", "").isalnum() else repr(value)
    return str(value)


def format_attrs(attrs: dict[str, Any]) -> str:
    shown = [f"{k}={_fmt(v)}" for k, v in attrs.items() if v is not None]
    return "{" + ", ".join(shown) + "}" if shown else ""


def format_node(node: Node) -> str:
    outs = ", ".join(f"%{o.name}" for o in node.outputs)
    args = ", ".join(f"%{i}" for i in node.inputs)
    attrs = format_attrs(node.op.attrs())
    types = ", ".join(str(o.type) if o.type is not None else "?" for o in node.outputs)
    text = f"{outs} = {node.op.kind}({args})"
    if attrs:
        text += f" {attrs}"
    text += f" : {types}"
    if node.source is not None and node.source != node.name:
        text += f"  # {node.source}"
    return text


def print_graph(graph: Graph) -> str:
    ins = ", ".join(str(v) for v in graph.inputs)
    lines = [f"graph {graph.name}({ins}) {{"]
    for key in sorted(graph.metadata):
        lines.append(f"  meta {key} = {graph.metadata[key]!r}")
    for const in graph.constants:
        lines.append(f"  const %{const.name}: {const.type} sha256:{const.sha256[:12]}")
    for node in graph.nodes:
        lines.append("  " + format_node(node))
    types = graph.value_types()
    rets = ", ".join(f"%{o}: {types.get(o) or '?'}" for o in graph.outputs)
    lines.append(f"  return {rets}")
    lines.append("}")
    return "\n".join(lines) + "\n"
