"""Mutators for hostile-input fuzzing, driven by a ``random.Random``.

Every mutator takes its randomness from the ``rng`` it is given, so the same
functions serve the in-CI hypothesis tests (``st.randoms(use_true_random=False)``:
hypothesis chooses, replays and shrinks the draws) and the long run in
``benchmarks/fuzz_long.py`` (``random.Random(seed)``: any failure is
reproduced from its seed alone).

Three levels, because each finds different bugs:

* bytes (bit flips, interesting values, truncation, splices): reach the
  container parsers (zipfile, libhdf5, json) and their error types;
* JSON documents (delete/add/retype keys, hostile numbers, deep nesting,
  lambdas and custom objects): reach the reader's config parsing, the
  converters and the artifact schema, which byte flips almost never do;
* HDF5 structure (wrong shapes and dtypes, links, unallocated or compressed
  huge datasets, bad ``weight_names``): reach the weight loader and its
  memory bounds.
"""

from __future__ import annotations

import base64
import copy
import io
import json
import random
import zipfile
from typing import Any, Callable

import h5py
import numpy as np

__all__ = [
    "HOSTILE_VALUES", "mutate_bytes", "truncate", "mutate_json", "dumps_hostile", "mutate_config",
    "mutate_weights", "mutate_h5_structure", "mutate_zip", "KERAS3_LAMBDA", "KERAS2_LAMBDA_CONFIG",
]

_INTERESTING_INTS = (0, 1, 2, 3, 7, 8, 0x7F, 0x80, 0xFF, 0x100, 0x7FFF, 0xFFFF, 0x7FFFFFFF, 0xFFFFFFFF,
                     2**63 - 1, 2**64 - 1)

#: A Keras 3 serialized Python lambda (``{"class_name": "__lambda__"}``): marshal bytes, never to be loaded.
KERAS3_LAMBDA: dict[str, Any] = {
    "module": "builtins", "class_name": "__lambda__", "registered_name": "__lambda__",
    "config": {"code": base64.b64encode(b"\xe3" + b"\x00" * 40).decode(), "defaults": None, "closure": None},
}
#: A Keras 2 Lambda config: ``function`` is a (base64 bytecode, defaults, closure) tuple.
KERAS2_LAMBDA_CONFIG: dict[str, Any] = {
    "name": "lambda", "trainable": True, "dtype": "float32",
    "function": [base64.b64encode(b"\xe3" + b"\x00" * 40).decode() + "\n", None, None],
    "function_type": "lambda", "module": "__main__", "output_shape": None, "output_shape_type": "raw",
    "output_shape_module": None, "arguments": {},
}

#: Values a hostile config puts where a size, flag, name or object belongs. "__NEST_<d>__"
#: strings are replaced by a d-deep JSON array in ``dumps_hostile`` (json.dumps cannot nest that deep).
HOSTILE_VALUES: tuple[Any, ...] = (
    None, True, False, 0, -1, 1, 2, 3, -3, 2**31, 2**31 - 1, 2**63, -(2**63), 10**12, -(10**12), 10**100,
    0.5, -0.0, 1e308, -1e308, float("nan"), float("inf"), float("-inf"),
    "", "x", "same", "valid", "causal", "full", "channels_first", "channels_last", "relu", "linear",
    "softmax", "float16", "mixed_float16", "bfloat16", "int8", "float64", "Conv2D", "Lambda", "__lambda__",
    "\x00", "\udcff".encode("utf-8", "surrogatepass").decode("utf-8", "replace"), "é" * 5, "../../evil",
    "a" * 5000, [], {}, [None], [0], [1], [3], [-1, -1], [0, 0], [3, 3, 3], [[3, 3]], [10**12, 10**12],
    [2**63, 1], [float("nan"), float("nan")], [1.5, 1.5], ["3", "3"], [True, True], {"a": 1},
    {"class_name": "Zeros", "config": {}}, copy.deepcopy(KERAS3_LAMBDA),
    {"module": "evil_module", "class_name": "function", "config": "evil_fn", "registered_name": "Custom>evil_fn"},
    {"module": "os", "class_name": "system", "config": "touch /tmp/keydnn-pwned"},
    "__NEST_64__", "__NEST_5000__", "__NEST_100000__",
)

_CLASS_NAMES = ("Conv2D", "Dense", "ReLU", "Softmax", "Flatten", "MaxPooling2D", "GlobalAveragePooling2D",
                "InputLayer", "Lambda", "Sequential", "Functional", "Model", "BatchNormalization",
                "CustomLayer", "", "Dense ", "dense", "TFOpLambda", "Activation")


# --------------------------------------------------------------------------- bytes


def _position(n: int, rng: random.Random) -> int:
    """A byte offset, biased to headers and trailers where container metadata lives."""
    if n <= 1:
        return 0
    r = rng.random()
    if r < 0.4:
        return rng.randrange(min(n, 2048))
    if r < 0.55:
        return max(0, n - 1 - rng.randrange(min(n, 512)))
    return rng.randrange(n)


def mutate_bytes(data: bytes, rng: random.Random, splice_from: bytes | None = None) -> bytes:
    """1-8 stacked byte edits: bit flips, random bytes, interesting integers, inserts, deletes, splices."""
    buf = bytearray(data)
    for _ in range(rng.randint(1, 8)):
        op = rng.randrange(9)
        n = len(buf)
        if n == 0:
            buf += bytes(rng.randrange(256) for _ in range(rng.randint(1, 16)))
            continue
        at = _position(n, rng)
        if op == 0:
            buf[at] ^= 1 << rng.randrange(8)
        elif op == 1:
            buf[at] = rng.randrange(256)
        elif op == 2:  # little-endian interesting integer (sizes, offsets, counts)
            width = rng.choice((1, 2, 4, 8))
            value = rng.choice(_INTERESTING_INTS) % (1 << (8 * width))
            buf[at:at + width] = value.to_bytes(width, "little")
        elif op == 3:
            buf[at:at] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 32)))
        elif op == 4:
            del buf[at:at + rng.randint(1, 64)]
        elif op == 5:  # duplicate a chunk elsewhere
            length = rng.randint(1, 256)
            chunk = bytes(buf[at:at + length])
            dest = rng.randrange(n)
            buf[dest:dest] = chunk
        elif op == 6:
            buf[at:at + 4] = b"\xff\xff\xff\xff"
        elif op == 7 and splice_from:
            start = rng.randrange(len(splice_from))
            chunk = splice_from[start:start + rng.randint(1, 512)]
            buf[at:at + len(chunk)] = chunk
        else:
            buf[at] = 0
    return bytes(buf)


def truncate(data: bytes, rng: random.Random) -> bytes:
    """A prefix of ``data`` (an interrupted download or copy)."""
    if not data:
        return data
    r = rng.random()
    if r < 0.2:
        return data[:rng.randrange(min(len(data), 64))]
    return data[:rng.randrange(len(data))]


# --------------------------------------------------------------------------- JSON


def hostile_value(rng: random.Random) -> Any:
    return copy.deepcopy(rng.choice(HOSTILE_VALUES))


def _containers(doc: Any, path: tuple = ()) -> list[tuple[tuple, Any]]:
    """Every (path, dict-or-list) in ``doc``, iteratively (the doc may already be deep)."""
    out: list[tuple[tuple, Any]] = []
    stack = [(path, doc)]
    while stack and len(out) < 5000:
        p, node = stack.pop()
        if isinstance(node, dict):
            out.append((p, node))
            stack.extend((p + (k,), v) for k, v in node.items())
        elif isinstance(node, list):
            out.append((p, node))
            stack.extend((p + (i,), v) for i, v in enumerate(node))
    out.sort(key=lambda item: [str(x) for x in item[0]])  # independent of dict order and traversal
    return out


def mutate_json(doc: Any, rng: random.Random, values: Callable[[random.Random], Any] = hostile_value,
                edits: int | None = None) -> Any:
    """1-4 structural edits anywhere in a JSON document (returns a mutated deep copy)."""
    doc = copy.deepcopy(doc)
    for _ in range(edits if edits is not None else rng.randint(1, 4)):
        nodes = _containers(doc)
        if not nodes:
            return values(rng)
        _, node = rng.choice(nodes)
        op = rng.randrange(7)
        if isinstance(node, dict):
            keys = sorted(node)
            if keys and op in (0, 1, 2):
                key = rng.choice(keys)
                if op == 0:
                    del node[key]
                elif op == 1:
                    node[key] = values(rng)
                else:  # retype: wrap, stringify, or emptied container
                    v = node[key]
                    node[key] = rng.choice([[v], str(v), {"value": v}, None if v is not None else 0])
            elif op == 3:
                node[rng.choice(["extra", "name", "config", "class_name", "dtype", "module", "__proto__",
                                 "registered_name", "shared_object_id", "x" * 300])] = values(rng)
            elif keys:
                node[rng.choice(keys)] = values(rng)
        elif isinstance(node, list):
            if node and op == 0:
                del node[rng.randrange(len(node))]
            elif node and op == 1:
                node[rng.randrange(len(node))] = values(rng)
            elif node and op == 2:
                i = rng.randrange(len(node))
                node.insert(rng.randrange(len(node) + 1), copy.deepcopy(node[i]))
            elif len(node) > 1 and op == 3:
                i, j = rng.randrange(len(node)), rng.randrange(len(node))
                node[i], node[j] = node[j], node[i]
            elif op == 4:
                del node[rng.randrange(len(node) + 1):]
            else:
                node.append(values(rng))
    return doc


def dumps_hostile(doc: Any) -> str:
    """``json.dumps`` that writes NaN/Infinity and expands ``"__NEST_<d>__"`` into d-deep arrays."""
    text = json.dumps(doc, allow_nan=True)
    for depth in (64, 5000, 100000):
        text = text.replace(f'"__NEST_{depth}__"', "[" * depth + "]" * depth)
    return text


def _layers(config: Any) -> list | None:
    inner = config.get("config") if isinstance(config, dict) else None
    layers = inner.get("layers") if isinstance(inner, dict) else None
    return layers if isinstance(layers, list) else None


def mutate_config(config: dict[str, Any], rng: random.Random) -> Any:
    """A model config with layer-aware edits (class names, lambdas, sizes) or generic JSON edits."""
    config = copy.deepcopy(config)
    layers = _layers(config)
    r = rng.random()
    if layers and r < 0.45:
        entry = rng.choice(layers)
        cfg = entry.get("config") if isinstance(entry, dict) else None
        choice = rng.randrange(8)
        if choice == 0 and isinstance(entry, dict):
            entry["class_name"] = rng.choice(_CLASS_NAMES)
        elif choice == 1 and isinstance(entry, dict):  # Keras 3 Lambda with marshalled code
            entry.update({"class_name": "Lambda", "module": "keras.layers", "registered_name": None,
                          "config": {"name": "lambda_x", "function": copy.deepcopy(KERAS3_LAMBDA),
                                     "arguments": {}, "output_shape": None}})
        elif choice == 2 and isinstance(entry, dict):  # Keras 2 Lambda with a bytecode tuple
            entry.update({"class_name": "Lambda", "config": copy.deepcopy(KERAS2_LAMBDA_CONFIG)})
        elif choice == 3 and isinstance(entry, dict):  # custom registered class
            entry.update({"module": "evil_module", "registered_name": "Custom>EvilLayer",
                          "class_name": rng.choice(["EvilLayer", "Dense", "Conv2D"])})
        elif choice == 4 and isinstance(cfg, dict):  # custom activation object
            cfg["activation"] = rng.choice([copy.deepcopy(KERAS3_LAMBDA),
                                            {"module": "evil_module", "class_name": "function",
                                             "config": "evil_fn", "registered_name": "evil_fn"}, "evil_fn"])
        elif choice == 5 and isinstance(cfg, dict):  # a size field to a hostile number
            key = rng.choice(["filters", "units", "kernel_size", "strides", "pool_size", "dilation_rate",
                              "groups", "axis", "batch_shape", "batch_input_shape", "max_value", "threshold",
                              "negative_slope", "keepdims", "padding", "data_format", "use_bias"])
            cfg[key] = hostile_value(rng)
        elif choice == 6 and isinstance(cfg, dict) and layers:  # duplicate names / missing names
            other = rng.choice(layers)
            name = other.get("config", {}).get("name") if isinstance(other, dict) and isinstance(
                other.get("config"), dict) else None
            cfg["name"] = name if rng.random() < 0.7 else hostile_value(rng)
        else:
            layers.insert(rng.randrange(len(layers) + 1), copy.deepcopy(rng.choice(layers)))
        return config
    if r < 0.55:
        config["class_name"] = rng.choice(_CLASS_NAMES + ("Functional",))
        return config
    return mutate_json(config, rng)


# --------------------------------------------------------------------------- weights and HDF5


def _hostile_array(rng: random.Random, shape: tuple[int, ...]) -> np.ndarray:
    choice = rng.randrange(10)
    if choice == 0:
        return np.zeros(rng.choice([(), (0,), (1,), (0, 3), (1, 1, 1, 1, 1)]), "float32")
    if choice == 1:
        return np.zeros(tuple(reversed(shape)), "float32")
    if choice == 2:
        return np.zeros(shape + (1,), "float32")
    if choice == 3:
        return np.zeros(shape[1:], "float32")
    if choice == 4:
        return np.full(shape, rng.choice([np.nan, np.inf, -np.inf]), "float32")
    if choice == 5:
        return np.zeros(shape, rng.choice(["float16", "float64", "int8", "int64", "uint8", "bool", "complex64"]))
    if choice == 6:
        return np.zeros(shape, ">f4")
    if choice == 7:
        return np.array(["x"] * max(1, int(np.prod(shape)) % 7), dtype=h5py.string_dtype())
    if choice == 8:
        return np.zeros(shape, [("a", "<f4"), ("b", "<i4")])
    return np.zeros(tuple(d + rng.choice([-1, 1, 5]) if d > 1 else d for d in shape), "float32")


def mutate_weights(weights: dict[str, list[tuple[str, np.ndarray]]], rng: random.Random) -> dict:
    """Wrong shapes/dtypes, missing or extra weights, NaNs; the config stays as it was."""
    weights = {k: list(v) for k, v in weights.items()}
    for _ in range(rng.randint(1, 3)):
        name = rng.choice(sorted(weights))
        items = weights[name]
        op = rng.randrange(4)
        if items and op == 0:
            i = rng.randrange(len(items))
            items[i] = (items[i][0], _hostile_array(rng, items[i][1].shape))
        elif items and op == 1:
            del items[rng.randrange(len(items))]
        elif op == 2:
            items.append((rng.choice(["kernel", "bias", "extra", "gamma"]), np.zeros(rng.choice([(2,), (3, 3)]),
                                                                                         "float32")))
        elif items:
            i, j = rng.randrange(len(items)), rng.randrange(len(items))
            items[i], items[j] = (items[i][0], items[j][1]), (items[j][0], items[i][1])
    return weights


def _datasets(h5: h5py.File) -> list[str]:
    names: list[str] = []
    h5.visititems(lambda n, o: names.append(n) if isinstance(o, h5py.Dataset) else None)
    return sorted(names)


def _groups(h5: h5py.File) -> list[str]:
    names: list[str] = []
    h5.visititems(lambda n, o: names.append(n) if isinstance(o, h5py.Group) else None)
    return sorted(names)


def _h5_edit(h5: h5py.File, rng: random.Random) -> None:
    datasets, groups = _datasets(h5), _groups(h5)
    op = rng.randrange(13)
    target = rng.choice(datasets) if datasets else None
    if target is not None and op == 0:  # huge, never written: reading it would allocate it from fill values
        shape = rng.choice([(10**6, 10**6), (2**28,), (20000, 20000), (3, 3, 2, 10**7), (2**62,)])
        del h5[target]
        try:
            h5.create_dataset(target, shape=shape, dtype="float32")
        except (ValueError, OSError, OverflowError):
            h5.create_dataset(target, shape=(2**28,), dtype="float32")
    elif target is not None and op == 1:  # a compression bomb: a large all-zero dataset, gzipped
        del h5[target]
        h5.create_dataset(target, data=np.zeros((4096, 1024), "float32"), compression="gzip", chunks=(512, 1024))
    elif target is not None and op == 2:
        parent, _, leaf = target.rpartition("/")
        del h5[target]
        h5[target] = h5py.SoftLink("/" + (rng.choice(datasets) if rng.random() < 0.5 else "nowhere"))
    elif target is not None and op == 3:
        del h5[target]
        h5[target] = h5py.ExternalLink(rng.choice(["/etc/passwd", "other.h5", "../evil.h5"]), "/data")
    elif target is not None and op == 4:
        del h5[target]
        h5.create_dataset(target, shape=(4,), dtype="float32", external=[("/etc/hostname", 0, 16)])
    elif target is not None and op == 5:
        del h5[target]
        h5[target] = _hostile_array(rng, (3, 3))
    elif target is not None and op == 6:
        del h5[target]
        h5.create_group(target)
    elif groups and op == 7:  # weight_names / layer_names / vars name attribute to hostile values
        group = h5[rng.choice(groups)]
        key = rng.choice(["weight_names", "layer_names", "name", "keras_version", "model_config"])
        group.attrs[key] = rng.choice([
            np.array([b"nope/kernel:0", b"../../x"], dtype=h5py.string_dtype()), np.array([1, 2, 3]),
            np.array([], dtype="float64"), "not a list", b"\xff\xfe", np.float64(np.nan),
            np.array([["a", "b"], ["c", "d"]], dtype=h5py.string_dtype()), "x" * 10000,
            np.array([""], dtype=h5py.string_dtype()),
        ])
    elif groups and op == 8:
        del h5[rng.choice(groups)]
    elif groups and op == 9:  # extra positional/named entries in a vars group
        group = h5[rng.choice(groups)]
        group.create_dataset(rng.choice(["7", "x", "-1", "01", "vars"]), data=np.zeros(2, "float32"))
    elif target is not None and op == 10:  # a cycle of hard links
        parent = target.rpartition("/")[0] or "/"
        h5[parent + "/loop"] = h5[parent]
    elif op == 11:
        h5.attrs[rng.choice(["keras_version", "backend", "model_config"])] = rng.choice(
            [np.array([1, 2]), "9.9.9", b"\x00", np.int64(3), ""])
    elif target is not None:
        del h5[target]


def mutate_h5_structure(data: bytes, rng: random.Random) -> bytes:
    """Edit a valid HDF5 file through h5py (links, hostile datasets and attributes), return its bytes."""
    buffer = io.BytesIO(data)
    with h5py.File(buffer, "r+") as h5:
        for _ in range(rng.randint(1, 3)):
            try:
                _h5_edit(h5, rng)
            except (KeyError, ValueError, TypeError, OSError, RuntimeError):
                pass  # an edit h5py itself refuses is simply skipped
    return buffer.getvalue()


# --------------------------------------------------------------------------- zip


def mutate_zip(data: bytes, rng: random.Random) -> bytes:
    """Rebuild a .keras archive with hostile members: traversal names, bombs, duplicates, odd compression."""
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        members = [(i.filename, zf.read(i)) for i in zf.infolist()]
    op = rng.randrange(9)
    if op == 0:  # path traversal / absolute names beside or instead of the real members
        evil = rng.choice(["../evil", "../../tmp/keydnn-evil", "/tmp/keydnn-evil-abs", "C:\\evil", "layers/../../x",
                           "config.json/../../evil"])
        members.insert(rng.randrange(len(members) + 1), (evil, b"pwned"))
    elif op == 1:  # duplicate member names: which one wins must not matter for safety
        name, payload = rng.choice(members)
        members.append((name, mutate_bytes(payload, rng)))
    elif op == 2:
        del members[rng.randrange(len(members))]
    elif op == 3:  # a member mutated at the byte level
        i = rng.randrange(len(members))
        members[i] = (members[i][0], mutate_bytes(members[i][1], rng))
    elif op == 4:  # a decompression bomb in place of a member
        i = rng.randrange(len(members))
        members[i] = (members[i][0], b"\0" * rng.choice([2**20, 64 * 2**20]))
        return _zip(members, zipfile.ZIP_DEFLATED)
    elif op == 5:
        return _zip(members, rng.choice([zipfile.ZIP_DEFLATED, zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA]))
    elif op == 6:  # JSON members with a hostile structure
        for i, (name, payload) in enumerate(members):
            if name.endswith(".json"):
                try:
                    doc = json.loads(payload)
                except ValueError:
                    continue
                members[i] = (name, dumps_hostile(mutate_json(doc, rng)).encode())
    elif op == 7:
        members.append((rng.choice(["model.weights.npz", "assets/x", "variables/x", "a" * 200]), b"\0" * 16))
    else:  # member order shuffled
        rng.shuffle(members)
    return _zip(members, zipfile.ZIP_STORED)


def _zip(members: list[tuple[str, bytes]], compression: int) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=compression) as zf:
        for name, payload in members:
            info = zipfile.ZipInfo(name)
            info.compress_type = compression
            zf.writestr(info, payload)
    return buffer.getvalue()
