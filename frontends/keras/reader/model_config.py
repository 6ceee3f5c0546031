"""Parsing the model config document (shared by files and live models).

The ``{"class_name", "config"}`` JSON a ``.keras`` archive, an ``.h5``
attribute or ``model.get_config()`` holds becomes a ``ParsedModel``: its
layer entries (normalized), whether it is functional, and its input.
JSON from a file is parsed with bounded size and depth (``loads_json``).
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from .limits import MAX_JSON_BYTES, MAX_JSON_DEPTH, MAX_LAYERS, fail
from .normalize import normalize_layer_config, plain

__all__ = ["Entry", "ParsedModel", "loads_json", "opt_str", "parse_model_config"]

logger = logging.getLogger(__name__)


@dataclass
class Entry:
    """One entry of the model config's ``layers`` list."""

    position: int  # position in the config's layers list
    class_name: str
    name: str
    config: dict[str, Any]  # normalized
    module: str | None
    registered_name: str | None
    inbound_nodes: list[Any] | None

    @property
    def is_input(self) -> bool:
        return self.class_name == "InputLayer"


@dataclass
class ParsedModel:
    """The model config, parsed: layer entries in config order and what the model says about its input."""

    model_class: str
    name: str
    entries: list[Entry]
    functional: bool  # InputLayers count as layers (model.layers includes them)
    input_shape: tuple[int | None, ...]
    input_dtype: str
    input_layers: list[Any] | None
    output_layers: list[Any] | None

    def indexed(self) -> Iterator[tuple[int, Entry]]:
        """(index in model.layers, entry) for every entry, InputLayers included."""
        index = 0
        for entry in self.entries:
            if entry.is_input and not self.functional:
                yield -1, entry
                continue
            yield index, entry
            index += 1

    def container(self) -> list[Entry]:
        """Entries in ``model.layers`` order (what the weights file walks)."""
        return [e for i, e in self.indexed() if i >= 0]


def opt_str(value: Any) -> str | None:
    """``value`` if it is a string, else None (optional string fields of a config)."""
    return value if isinstance(value, str) else None


def _parse_shape(value: Any, where: str, what: str) -> tuple[int | None, ...]:
    if not isinstance(value, (list, tuple)):
        raise fail(where, f"{what} is not a list of dimensions", field=what, value=value)
    dims: list[int | None] = []
    for dim in value:
        if dim is None or (isinstance(dim, int) and not isinstance(dim, bool) and dim >= 0):
            dims.append(dim)
        else:
            raise fail(where, f"{what} has an invalid dimension {dim!r}", field=what, value=value)
    return tuple(dims)


def _parse_entry(raw: Any, position: int, where: str) -> Entry:
    if not isinstance(raw, Mapping):
        raise fail(where, f"layer entry {position} is not an object", value=raw)
    class_name = raw.get("class_name")
    config = raw.get("config")
    if not isinstance(class_name, str) or not class_name:
        raise fail(where, f"layer entry {position} has no class_name", value=class_name)
    if not isinstance(config, Mapping):
        raise fail(
            where,
            f"layer entry {position} ({class_name}) has no config object",
            layer_class=class_name,
            field="config",
            value=config,
        )
    name = config.get("name", raw.get("name"))
    if not isinstance(name, str) or not name:
        raise fail(
            where,
            f"layer entry {position} ({class_name}) has no name",
            layer_class=class_name,
            field="name",
            value=name,
        )
    inbound = raw.get("inbound_nodes")
    return Entry(
        position=position,
        class_name=class_name,
        name=name,
        config=normalize_layer_config(config),
        module=opt_str(raw.get("module")),
        registered_name=opt_str(raw.get("registered_name")),
        inbound_nodes=plain(inbound) if isinstance(inbound, (list, tuple)) else None,
    )


def parse_model_config(root: Any, where: str) -> ParsedModel:
    """Parse the ``{"class_name", "config"}`` document describing the model."""
    if not isinstance(root, Mapping):
        raise fail(where, "model config is not a JSON object", value=type(root).__name__)
    model_class = root.get("class_name")
    if not isinstance(model_class, str) or not model_class:
        raise fail(where, "model config has no class_name", field="class_name", value=model_class)
    config = root.get("config")
    if isinstance(config, list):  # Keras <= 2.2 Sequential: config is the layer list
        config = {"name": "sequential", "layers": config}
    if config is None:
        config = {}
    if not isinstance(config, Mapping):
        raise fail(where, "model config's 'config' is not an object", field="config", value=config)
    name = config.get("name")
    name = name if isinstance(name, str) else model_class.lower()

    raw_layers = config.get("layers", [])
    if raw_layers is None:
        raw_layers = []
    if not isinstance(raw_layers, list):
        raise fail(
            where, "model config's 'layers' is not a list", field="layers", value=raw_layers
        )
    if len(raw_layers) > MAX_LAYERS:
        raise fail(
            where,
            f"model config lists {len(raw_layers)} layers, more than the limit of {MAX_LAYERS}",
            field="layers",
        )
    entries = [_parse_entry(raw, i, where) for i, raw in enumerate(raw_layers)]
    counts = Counter(e.name for e in entries)
    dup = sorted(n for n, c in counts.items() if c > 1)
    if dup:
        shown = dup[:10] + (["..."] if len(dup) > 10 else [])
        raise fail(where, f"duplicate layer names {shown}", field="layers", value=shown)

    functional = model_class != "Sequential" and (
        "input_layers" in config or any(e.inbound_nodes is not None for e in entries)
    )
    input_shape, input_dtype = _find_input(config, root, entries, functional, where)
    input_layers = plain(config["input_layers"]) if "input_layers" in config else None
    output_layers = plain(config["output_layers"]) if "output_layers" in config else None
    return ParsedModel(
        model_class=model_class,
        name=name,
        entries=entries,
        functional=functional,
        input_shape=input_shape,
        input_dtype=input_dtype,
        input_layers=input_layers,
        output_layers=output_layers,
    )


def _find_input(
    config: Mapping[str, Any],
    root: Mapping[str, Any],
    entries: list[Entry],
    functional: bool,
    where: str,
) -> tuple[tuple[int | None, ...], str]:
    """Input batch shape and dtype, from wherever this Keras version put it."""
    dtype: Any = None
    for entry in entries:
        if entry.is_input:
            for key in ("batch_shape", "batch_input_shape"):
                if entry.config.get(key) is not None:
                    dtype = entry.config.get("dtype")
                    return (
                        _parse_shape(entry.config[key], where, f"{entry.name}.{key}"),
                        dtype if isinstance(dtype, str) else "float32",
                    )
            break
    first = next((e for e in entries if not e.is_input), None)
    if first is not None and not functional:
        for key in ("batch_input_shape", "batch_shape"):
            if first.config.get(key) is not None:
                dtype = first.config.get("dtype")
                if not isinstance(dtype, str) or dtype.startswith("mixed_"):
                    dtype = "float32"
                return _parse_shape(first.config[key], where, f"{first.name}.{key}"), dtype
    candidates = [config.get("build_input_shape")]
    build_config = root.get("build_config")
    if isinstance(build_config, Mapping):
        candidates.append(build_config.get("input_shape"))
    for candidate in candidates:
        if isinstance(candidate, (list, tuple)) and all(
            d is None or isinstance(d, int) for d in candidate
        ):
            return _parse_shape(candidate, where, "build_input_shape"), "float32"
    logger.debug("%s: no input shape recorded", where)
    return (), "float32"


def loads_json(data: bytes | str, where: str, what: str) -> Any:
    """Parse a JSON document of bounded size and nesting (NaN/Infinity are read as floats)."""
    if len(data) > MAX_JSON_BYTES:
        raise fail(where, f"{what} is {len(data)} bytes, over the {MAX_JSON_BYTES}-byte limit")
    try:
        doc = json.loads(data)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError, UnicodeDecodeError
        raise fail(where, f"{what} is not valid JSON ({exc})") from exc
    _check_depth(doc, where, what)
    return doc


def _check_depth(doc: Any, where: str, what: str) -> None:
    """Refuse documents nested deeper than ``MAX_JSON_DEPTH``, without recursing."""
    stack: list[tuple[Any, int]] = [(doc, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, dict):
            children: Any = node.values()
        elif isinstance(node, list):
            children = node
        else:
            continue
        if depth > MAX_JSON_DEPTH:
            raise fail(where, f"{what} is nested deeper than {MAX_JSON_DEPTH} levels")
        stack.extend((child, depth + 1) for child in children if isinstance(child, (dict, list)))
