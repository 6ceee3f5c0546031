"""Weight stores: a layer's named weight arrays, from a ``.keras`` archive or a whole-model ``.h5``.

Both stores answer ``read(index, entry) -> [(name, array)]`` so that
``build.build_spec`` does not care which format the weights came from.
"""

from __future__ import annotations

import logging
import re
from typing import Any

import h5py
import numpy as np

from keydnn.errors import KerasInteropError

from .limits import MAX_GROUP_DEPTH, fail
from .model_config import Entry, ParsedModel
from .safe_h5 import Budget, attr_str, attr_str_list, read_dataset, resolve
from .weight_names import positional_layout, weight_names_for

__all__ = ["H5Weights", "ZipWeights", "snake_case"]

logger = logging.getLogger(__name__)


def snake_case(name: str, keras2: bool) -> str:
    """Keras's ``to_snake_case``: the name of a layer's group in ``.keras`` files."""
    if keras2:  # tf_keras.src.utils.generic_utils.to_snake_case
        name = re.sub("(.)([A-Z][a-z0-9]+)", r"\1_\2", name)
        name = re.sub("([a-z])([A-Z])", r"\1_\2", name).lower()
        return name if not name.startswith("_") else "private" + name
    name = re.sub(r"\W+", "", name)
    name = re.sub("(.)([A-Z][a-z]+)", r"\1_\2", name)
    return re.sub("([a-z])([A-Z])", r"\1_\2", name).lower()


class ZipWeights:
    """Weights of a ``.keras`` archive: ``layers/<path>/vars/<i>``, positional.

    A layer's group is named after its *class* (``dense``, ``dense_1``, ...
    in ``model.layers`` order), not after the layer; newer Keras also stores
    the layer name as the ``vars`` group's ``name`` attribute, which we prefer.
    """

    def __init__(self, h5: h5py.File, parsed: ParsedModel, keras2: bool, where: str) -> None:
        self.where = where
        self.budget = Budget(where)
        self.root: h5py.Group | None = None
        for root_name in ("layers", "_layer_checkpoint_dependencies"):
            node = resolve(h5, root_name, where, "weights root")
            if isinstance(node, h5py.Group):
                self.root = node
                break
        self.by_name: dict[str, str] = {}
        ambiguous: set[str] = set()
        if self.root is not None:
            for key in self.root:
                vars_group = resolve(self.root, f"{key}/vars", where, f"group {key!r}")
                if isinstance(vars_group, h5py.Group):
                    layer_name = attr_str(vars_group, "name")
                    if layer_name is not None:
                        if layer_name in self.by_name:
                            ambiguous.add(layer_name)
                        self.by_name[layer_name] = key
        for layer_name in ambiguous:
            del self.by_name[layer_name]
        used: dict[str, int] = {}
        self.positional: dict[str, str] = {}
        for entry in parsed.container():
            base = snake_case(entry.class_name, keras2)
            if base in used:
                used[base] += 1
                key = f"{base}_{used[base]}"
            else:
                used[base] = 0
                key = base
            self.positional[entry.name] = key

    def _group_for(self, entry: Entry) -> h5py.Group | None:
        if self.root is None:
            return None
        key = self.by_name.get(entry.name)
        if key is None:
            key = self.positional.get(entry.name)
            if key is None or key not in self.root:
                return None
            vars_group = resolve(self.root, f"{key}/vars", self.where, entry.name)
            recorded = attr_str(vars_group, "name") if isinstance(vars_group, h5py.Group) else None
            if recorded is not None and recorded != entry.name:
                return None  # the class-derived slot belongs to another layer
        node = resolve(self.root, key, self.where, f"layer {entry.name!r}")
        return node if isinstance(node, h5py.Group) else None

    def read(self, index: int, entry: Entry) -> list[tuple[str, np.ndarray]]:
        group = self._group_for(entry)
        layout = positional_layout(entry.class_name, entry.config)
        if group is None:
            return []
        slots = self._collect(group, "")
        out: list[tuple[str, np.ndarray]] = []
        seen_paths: set[str] = set()
        if layout is not None:
            for rel, names in layout.items():
                arrays = slots.get(rel, [])
                seen_paths.add(rel)
                if len(arrays) < len(names):
                    location = f"{rel}/vars" if rel else "vars"
                    raise fail(
                        self.where,
                        f"{len(arrays)} stored variables under {location!r}, "
                        f"expected {len(names)} ({', '.join(names)})",
                        layer_index=index,
                        layer_name=entry.name,
                        layer_class=entry.class_name,
                    )
                for i, array in enumerate(arrays):
                    name = names[i] if i < len(names) else f"var{i}"
                    out.append(((f"{rel}/{name}" if rel and i >= len(names) else name), array))
                if len(arrays) > len(names):
                    logger.warning(
                        "%s: layer %r (%s) stores %d extra variables; named var<i>",
                        self.where,
                        entry.name,
                        entry.class_name,
                        len(arrays) - len(names),
                    )
        for rel, arrays in slots.items():
            if rel in seen_paths:
                continue
            for i, array in enumerate(arrays):
                out.append((f"{rel}/var{i}" if rel else f"var{i}", array))
        return out

    def _collect(
        self, group: h5py.Group, rel: str, visited: set[Any] | None = None, depth: int = 0
    ) -> dict[str, list[np.ndarray]]:
        """Positional vars of ``group`` and of its nested sub-objects, by sub-path.

        Hard links can make HDF5 groups a cycle, a lattice reaching one group
        along exponentially many paths, or arbitrarily deep; Keras writes a
        tree, so a group reached twice or too deep is refused, not walked.
        """
        visited = set() if visited is None else visited
        if group.id in visited:
            raise fail(
                self.where, f"HDF5 group {group.name} is linked more than once (or in a cycle); refused"
            )
        if depth >= MAX_GROUP_DEPTH:
            raise fail(
                self.where, f"HDF5 groups nested deeper than {MAX_GROUP_DEPTH} levels at {group.name}"
            )
        visited.add(group.id)
        out: dict[str, list[np.ndarray]] = {}
        vars_group = resolve(group, "vars", self.where, f"{group.name}/vars")
        if isinstance(vars_group, h5py.Group):
            keys = list(vars_group.keys())
            positional = all(k.isascii() and k.isdigit() for k in keys)
            if not positional or sorted(int(k) for k in keys) != list(range(len(keys))):
                shown = sorted(keys)[:10] + (["..."] if len(keys) > 10 else [])
                raise fail(self.where, f"{vars_group.name} has non-positional entries {shown}")
            arrays = []
            for k in sorted(keys, key=int):
                node = resolve(vars_group, k, self.where, f"{vars_group.name}/{k}")
                arrays.append(read_dataset(node, self.where, f"{vars_group.name}/{k}", self.budget))
            if arrays or not rel:
                out[rel] = arrays
        for key in group:
            if key == "vars":
                continue
            sub = resolve(group, key, self.where, f"{group.name}/{key}")
            if isinstance(sub, h5py.Group):
                sub_path = f"{rel}/{key}" if rel else key
                for sub_rel, arrays in self._collect(sub, sub_path, visited, depth + 1).items():
                    if arrays:
                        out[sub_rel] = arrays
        return out


class H5Weights:
    """Weights of a whole-model ``.h5`` (Keras 2 or 3): ``model_weights/<layer>``.

    Each layer group's ``weight_names`` attribute gives the order and the
    dataset paths relative to the group; listing the group would not.
    """

    def __init__(self, h5: h5py.File, where: str) -> None:
        self.where = where
        self.budget = Budget(where)
        node = resolve(h5, "model_weights", where, "model_weights")
        if node is None and "layer_names" in h5.attrs:
            node = h5  # very old files keep the layer groups at the root
        if not isinstance(node, h5py.Group):
            raise fail(where, "HDF5 file has no 'model_weights' group", field="model_weights")
        self.root = node

    def read(self, index: int, entry: Entry) -> list[tuple[str, np.ndarray]]:
        def refuse(message: str) -> KerasInteropError:
            return fail(
                self.where,
                message,
                layer_index=index,
                layer_name=entry.name,
                layer_class=entry.class_name,
            )

        group = resolve(self.root, entry.name, self.where, f"layer {entry.name!r}")
        if group is None:
            return []
        if not isinstance(group, h5py.Group):
            raise refuse("weights entry is not an HDF5 group")
        weight_names = attr_str_list(group, "weight_names", self.where)
        if weight_names is None:
            raise refuse("weights group has no 'weight_names' attribute")
        names = weight_names_for(entry.name, weight_names)
        out = []
        for full, name in zip(weight_names, names, strict=True):
            node = resolve(group, full, self.where, f"{group.name}/{full}")
            if node is None:
                raise refuse(f"weight {full!r} listed in weight_names is missing")
            out.append((name, read_dataset(node, self.where, f"{group.name}/{full}", self.budget)))
        return out
