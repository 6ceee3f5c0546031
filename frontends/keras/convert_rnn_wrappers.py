"""Converters of the recurrent wrappers: Bidirectional (every merge_mode, a backward_layer) and the generic RNN
over Keras's cells (SimpleRNNCell, LSTMCell, GRUCell, StackedRNNCells). Both lower to the ``dense`` + ``rnn``
pairs of ``convert_recurrent``.
"""

from __future__ import annotations

from typing import Any

from keydnn.frontends.keras.convert_core import check_dtype_policy
from keydnn.frontends.keras.convert_recurrent import (
    RNN_CLASSES, _emit_on, _Fields, _finish, _initial_states, _pick, _recurrence, _Settings, _settings,
    _state_names,
)
from keydnn.frontends.keras.lower import MULTI_INPUT_LAYERS
from keydnn.frontends.keras.registry import LayerContext, Unconvertible, register_converter
from keydnn.ir.ops import Add, Avg, Concat, Mul

__all__: list[str] = []

MULTI_INPUT_LAYERS.update({"Bidirectional", "RNN"})

_MERGES = {"concat": lambda: Concat(axis=-1), "sum": Add, "mul": Mul, "ave": Avg}


@register_converter("Bidirectional", constraints=(
    "over SimpleRNN, LSTM or GRU (any of their supported configs), merge_mode 'concat'/'sum'/'mul'/'ave'/None "
    "(two outputs), a backward_layer, return_state, initial_state (forward states then backward), masks"))
def convert_bidirectional(ctx: LayerContext) -> None:
    from keydnn.frontends.keras.reader import normalize_layer_config

    check_dtype_policy(ctx)
    merge_mode = ctx.check_in("merge_mode", ("concat", "sum", "mul", "ave", None), "concat")
    ctx.require(ctx.cfg("weights") is None, "initial weights in the config are not supported", field="weights")
    inner = ctx.cfg("layer")
    back = ctx.cfg("backward_layer")
    specs = []
    for role, entry in (("layer", inner), ("backward_layer", back)):
        if entry is None:
            specs.append(None)
            continue
        cls = entry.get("class_name") if isinstance(entry, dict) else None
        if cls not in RNN_CLASSES:
            ctx.refuse(f"Bidirectional over {cls!r} is not supported", field=role, value=cls,
                       supported=", ".join(RNN_CLASSES))
            raise Unconvertible
        specs.append((cls, normalize_layer_config(entry.get("config") or {})))
    f_cls, f_cfg = specs[0]
    keras2 = ctx.options.keras_major < 3
    fields = _Fields(ctx, f_cfg, "layer")
    fs = _settings(ctx, f_cls, fields.get, keras2_bidi=keras2)
    fields.refuse_unknown()
    if specs[1] is None:
        b_cls, b_cfg = f_cls, dict(f_cfg, go_backwards=not fs.go_backwards, name=f"backward_{f_cfg.get('name')}")
    else:
        b_cls, b_cfg = specs[1]
    bfields = _Fields(ctx, b_cfg, "backward_layer")
    bs = _settings(ctx, b_cls, bfields.get, keras2_bidi=keras2)
    bfields.refuse_unknown()
    if bs.return_sequences and not bs.go_backwards:
        ctx.refuse("the backward layer does not go backwards (the wrapped layer has go_backwards=True)",
                   field="layer", supported="a wrapped layer with go_backwards=False")
        raise Unconvertible
    forward_w = [(n, a) for n, a in ctx.layer.weights if n.split("/", 1)[0].startswith("forward")
                 or n.split("/", 1)[0] == f_cfg.get("name")]
    forward_names = {n for n, _ in forward_w}
    backward_w = [(n, a) for n, a in ctx.layer.weights if n not in forward_names]
    fa, ba = _pick(ctx, forward_w, fs), _pick(ctx, backward_w, bs)
    given = list(getattr(ctx, "inputs", ())[1:])
    half = len(given) // 2
    f_states = _initial_states(ctx, fs, given[:half])
    b_states = _initial_states(ctx, bs, given[half:])
    x = ctx.x
    f_want = ("output",) + (_state_names(fs) if fs.return_state else ())
    b_want = ("output",) + (_state_names(bs) if bs.return_state else ())
    fr = _recurrence(ctx, fs, fa, x, f_states, "forward", results=f_want)
    br = _recurrence(ctx, bs, ba, x, b_states, "backward", restore=True, results=b_want)
    states = [fr[k] for k in f_want[1:]] + [br[k] for k in b_want[1:]]
    if merge_mode is None:
        _finish(ctx, fr["output"], [br["output"]] + states, fs.return_sequences)
        return
    merged = _emit_on(ctx, fr["output"], _MERGES[merge_mode](), br["output"], suffix=None)
    _finish(ctx, merged, states, fs.return_sequences)


#: Keras cell class -> the layer class with the same math.
_CELL_LAYERS = {"SimpleRNNCell": "SimpleRNN", "LSTMCell": "LSTM", "GRUCell": "GRU"}
_WRAPPER_FIELDS = ("return_sequences", "return_state", "go_backwards", "stateful", "time_major",
                   "zero_output_for_mask")


def _cell_weights(ctx: LayerContext, cells: list[tuple[str, dict]], keras2: bool) -> list[list[tuple[str, Any]]]:
    """Each stacked cell's weights: h5 groups them by the cell's name, .keras by its class key (lstm_cell_1)."""
    from keydnn.frontends.keras.reader import snake_case

    if len(cells) == 1:
        return [list(ctx.layer.weights)]
    used: dict[str, int] = {}
    groups = []
    for cls, cfg in cells:
        base = snake_case(cls, keras2)
        used[base] = used.get(base, -1) + 1
        keys = {cfg.get("name"), base if used[base] == 0 else f"{base}_{used[base]}"}
        groups.append([(n, a) for n, a in ctx.layer.weights if len(n.split("/")) >= 2 and
                       (n.split("/")[-2] in keys)])
    return groups


@register_converter("RNN", constraints=(
    "over SimpleRNNCell, LSTMCell, GRUCell (their supported configs, as the matching layers) or StackedRNNCells "
    "of them; return_sequences, go_backwards, masks; return_state and initial_state for one cell; "
    "stateful=True and time_major=True are refused"))
def convert_rnn_wrapper(ctx: LayerContext) -> None:
    from keydnn.frontends.keras.reader import normalize_layer_config

    check_dtype_policy(ctx)
    ctx.ignore("unroll")
    wrapper = {key: ctx.cfg(key) for key in _WRAPPER_FIELDS if key in ctx.layer.config}
    entry = ctx.cfg("cell")
    cls = entry.get("class_name") if isinstance(entry, dict) else None
    config = normalize_layer_config(entry.get("config") or {}) if isinstance(entry, dict) else {}
    if cls == "StackedRNNCells":
        raw = config.get("cells") or []
        cells = [(c.get("class_name"), normalize_layer_config(c.get("config") or {})) for c in raw
                 if isinstance(c, dict)]
        extra = sorted(set(config) - {"cells", "name", "trainable", "dtype"})
        for key in extra:
            ctx.refuse(f"StackedRNNCells config field {key!r} is not understood by keydnn", field=key)
    else:
        cells = [(cls, config)]
    if not cells or any(c not in _CELL_LAYERS for c, _ in cells):
        ctx.refuse(f"RNN over {cls!r} is not supported", field="cell", value=cls,
                   supported="SimpleRNNCell, LSTMCell, GRUCell, StackedRNNCells of them")
        raise Unconvertible
    settings = []
    for c_cls, c_cfg in cells:
        fields = _Fields(ctx, {**c_cfg, **wrapper}, "cell")
        settings.append(_settings(ctx, _CELL_LAYERS[c_cls], fields.get))
        fields.refuse_unknown()
    last = settings[-1]
    given = list(getattr(ctx, "inputs", ())[1:])
    if len(cells) > 1 and (last.return_state or given):
        ctx.refuse("return_state / initial_state of stacked cells are not supported", field="return_state",
                   value=last.return_state, supported="one cell, or StackedRNNCells without states")
        raise Unconvertible
    groups = _cell_weights(ctx, cells, ctx.options.keras_major < 3)
    x = ctx.x
    for i, (s, weights) in enumerate(zip(settings, groups)):
        final = i == len(settings) - 1
        if not final:  # an inner cell of a stack: its whole sequence, in input time order, feeds the next
            s = _Settings(**{**s.__dict__, "return_sequences": True, "return_state": False})
        states = _initial_states(ctx, s, given) if final else []
        wanted = ("output",) + (_state_names(s) if final and s.return_state else ())
        res = _recurrence(ctx, s, _pick(ctx, weights, s), x, states, "" if len(cells) == 1 else f"cell{i}",
                          restore=not final, results=wanted)
        x = res["output"]
    _finish(ctx, x, [res[k] for k in wanted[1:]], last.return_sequences)
