"""Nested models: the layers of a Sequential or Functional model used as a layer, each with its own weights.

Keras saves a nested model's weights under the outer layer; which inner layer owns each one is read off the
weight names (HDF5) or the archive's key order (``.keras``), see ``../shared/KERAS_FILES.md``.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np

from keydnn.errors import Problem
from keydnn.frontends.keras.graph_context import NESTED_MODEL_CLASSES
from keydnn.frontends.keras.spec import LayerSpec, ModelSpec

__all__ = ["nested_layers"]


def _is_model(class_name: str, config: Any) -> bool:
    return class_name in NESTED_MODEL_CLASSES and isinstance(config, dict) and isinstance(config.get("layers"), list)


def nested_layers(layer: LayerSpec, spec: ModelSpec | None = None) -> tuple[dict[str, LayerSpec], list[Problem]]:
    """The layers of a nested model (InputLayers left out) as LayerSpecs with their own weights.

    Their names are ``<model>/<layer>``; their weights are routed from the
    nested model's flat list by the paths the reader kept (``in_d1/kernel``;
    ``layers/dense/var0`` in ``.keras`` archives), or by a name only one of
    them can own (``gamma``).
    """
    from keydnn.frontends.keras.reader import normalize_layer_config

    entries = [e for e in layer.config.get("layers", []) if isinstance(e, dict)]
    children: dict[str, LayerSpec] = {}
    for entry in entries:
        cls = entry.get("class_name")
        config = entry.get("config")
        if cls == "InputLayer" or not isinstance(cls, str) or not isinstance(config, dict):
            continue
        local = config.get("name", entry.get("name"))
        if not isinstance(local, str):
            continue
        children[local] = LayerSpec(
            index=layer.index, class_name=cls, name=f"{layer.name}/{local}", config=normalize_layer_config(config),
            weights=(), module=entry.get("module") if isinstance(entry.get("module"), str) else None,
            registered_name=entry.get("registered_name") if isinstance(entry.get("registered_name"), str) else None,
            inbound_nodes=entry.get("inbound_nodes") if isinstance(entry.get("inbound_nodes"), list) else None,
        )
    keras2 = bool(spec is not None and (spec.keras_version or "").startswith("2."))
    routed, problems = _route_weights(layer, list(children.values()), keras2)
    for local, child in children.items():
        children[local] = replace(child, weights=tuple(routed.get(local, [])))
    return children, problems


def _expected_names(child: LayerSpec) -> list[str] | None:
    from keydnn.frontends.keras.reader import positional_layout

    layout = positional_layout(child.class_name, child.config)
    if layout is None:
        return None
    return [n if not rel else f"{rel}/{n}" for rel, names in layout.items() for n in names]


def _inner_names(class_name: Any, config: Any) -> set[str]:
    """Local names of the layers inside a nested model (all depths); empty for a plain layer."""
    out: set[str] = set()
    for entry in config.get("layers", []) if _is_model(class_name, config) else []:
        sub = entry.get("config") if isinstance(entry, dict) else None
        if isinstance(sub, dict) and isinstance(sub.get("name"), str) and entry.get("class_name") != "InputLayer":
            out.add(sub["name"])
            out |= _inner_names(entry.get("class_name"), sub)
    return out


def _zip_keys(children: list[LayerSpec], keras2: bool) -> dict[str, str]:
    """``.keras`` group key (``dense``, ``dense_1``...) -> child local name, as Keras numbers them by class."""
    from keydnn.frontends.keras.reader import snake_case

    used: dict[str, int] = {}
    keys: dict[str, str] = {}
    for child in children:
        base = snake_case(child.class_name, keras2)
        used[base] = used.get(base, -1) + 1
        keys[base if used[base] == 0 else f"{base}_{used[base]}"] = child.name.rsplit("/", 1)[-1]
    return keys


def _route_weights(layer: LayerSpec, children: list[LayerSpec], keras2: bool
                   ) -> tuple[dict[str, list[tuple[str, np.ndarray]]], list[Problem]]:
    from keydnn.frontends.keras.reader import canonical_weight_name

    local = {c.name.rsplit("/", 1)[-1]: c for c in children}
    expected = {name: _expected_names(c) for name, c in local.items()}
    deep: dict[str, list[str]] = {}
    for name, child in local.items():
        for inner in _inner_names(child.class_name, child.config):
            deep.setdefault(inner, []).append(name)
    zip_keys = _zip_keys(children, keras2)
    routed: dict[str, list[tuple[str, np.ndarray]]] = {}
    unrouted: list[str] = []

    def put(child: str, wname: str, array: np.ndarray) -> None:
        if expected[child] is not None:  # a plain layer: short names, Keras 3 spelling
            wname = canonical_weight_name(local[child].class_name, wname)
        routed.setdefault(child, []).append((wname, array))

    for wname, array in layer.weights:
        parts = wname.split("/")
        if len(parts) >= 3 and parts[0] == "layers" and parts[1] in zip_keys:  # .keras: layers/<key>/.../var<i>
            child = zip_keys[parts[1]]
            rest = "/".join(parts[2:])
            names = expected[child]
            if names is not None and rest.startswith("var") and rest[3:].isdigit() and int(rest[3:]) < len(names):
                rest = names[int(rest[3:])]
            put(child, rest, array)
            continue
        target = None
        for i, part in enumerate(parts[:-1]):
            if part in local:
                target = (part, "/".join(parts[i + 1:]))
                break
            if len(deep.get(part, [])) == 1:
                target = (deep[part][0], "/".join(parts[i:]))
                break
        if target is None and len(parts) == 1:
            owners = [n for n, names in expected.items() if names is not None and wname in names]
            if len(owners) == 1:
                target = (owners[0], wname)
        if target is None:
            unrouted.append(wname)
            continue
        put(*target, array)
    problems = []
    if unrouted:
        problems.append(Problem(f"cannot tell which layer of the nested model owns weight(s) {unrouted}",
                                layer.index, layer.name, layer.class_name, field="weights",
                                value=[w for w, _ in layer.weights]))
    return routed, problems
