"""Converters of sequence layers: SimpleRNN, LSTM, GRU, Bidirectional, Embedding, Masking, RepeatVector,
TimeDistributed.

A recurrent layer lowers to one ``dense`` node (the input projection of every
time step: one matrix product) and one ``rnn`` node per result it returns
(see ``keydnn.ir.ops.recurrent``). Masks are tracked by the driver
(``GraphLayerContext.in_mask`` / ``out_mask``): ``Embedding(mask_zero=True)``
and ``Masking`` make one, recurrent layers consume it and pass it on when they
return sequences. ``initial_state`` tensors arrive as the call's further inputs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from keydnn.frontends.keras.activations import activation_op
from keydnn.frontends.keras.convert_core import check_dtype_policy
from keydnn.frontends.keras.lower import MULTI_INPUT_LAYERS, GraphLayerContext
from keydnn.frontends.keras.registry import (
    CONVERTERS, TRAINING_ONLY_FIELDS, LayerContext, Unconvertible, register_converter,
)
from keydnn.frontends.keras.spec import LayerSpec
from keydnn.ir.ops import Add, Avg, Concat, Dense, Mul
from keydnn.ir.ops.recurrent import (
    CELL_GATES, Embedding, FoldTime, Masking, RepeatVector, Rnn, SequenceMask, UnfoldTime,
)

__all__ = ["RNN_CLASSES"]

#: Keras class -> cell kind.
RNN_CLASSES: dict[str, str] = {"SimpleRNN": "simple", "LSTM": "lstm", "GRU": "gru"}
MULTI_INPUT_LAYERS.update(RNN_CLASSES)
MULTI_INPUT_LAYERS.add("Bidirectional")

#: Config fields of recurrent layers that only matter in training (or are pure execution strategy).
_RNN_IGNORED = frozenset({
    "recurrent_initializer", "recurrent_regularizer", "recurrent_constraint", "unit_forget_bias",
    "implementation",  # Keras 2's choice of fused or split matrix products: same math
    "unroll",  # a Python loop or a symbolic one: same math
})


class _Fields:
    """Config reading for a nested layer config (Bidirectional's ``layer``): records what was read."""

    def __init__(self, ctx: LayerContext, config: dict[str, Any], where: str) -> None:
        self.ctx, self.config, self.where, self.used = ctx, config, where, set()

    def get(self, key: str, default: Any = None) -> Any:
        self.used.add(key)
        return self.config.get(key, default)

    def refuse_unknown(self) -> None:
        for key in sorted(set(self.config) - self.used - TRAINING_ONLY_FIELDS - _RNN_IGNORED):
            self.ctx.refuse(f"{self.where} config field {key!r} is not understood by keydnn", field=key,
                            value=self.config.get(key), supported="the fields documented for this layer")


def _top_fields(ctx: LayerContext) -> Callable[[str, Any], Any]:
    ctx.ignore(*_RNN_IGNORED)
    return ctx.cfg


@dataclass(frozen=True)
class _Settings:
    cell: str
    units: int
    activation: str
    recurrent_activation: str
    use_bias: bool
    return_sequences: bool
    return_state: bool
    go_backwards: bool
    reset_after: bool
    zero_output_for_mask: bool


def _cell_activation(ctx: LayerContext, key: str, name: Any) -> str:
    try:
        op = activation_op(name, ctx.options.keras_major)
    except KeyError:
        op = "bad"
    if op is None:
        return "linear"
    if getattr(op, "kind", None) == "relu" and op.max_value is None and op.negative_slope == 0 and op.threshold == 0:
        return "relu"
    if getattr(op, "kind", None) == "activation" and op.function in Rnn.model_fields["activation"].annotation.__args__:
        return op.function
    ctx.refuse(f"unsupported {key} {name!r}", field=key, value=name,
               supported="linear, relu, sigmoid, tanh, hard_sigmoid, softsign, softplus, elu, selu, gelu, swish, "
                         "exponential")
    return "tanh"


def _flag(ctx: LayerContext, get: Callable[[str, Any], Any], key: str, default: bool) -> bool:
    value = get(key, default)
    if value is None:
        value = default
    if not isinstance(value, bool):
        ctx.refuse(f"invalid {key} {value!r}", field=key, value=value, supported="true or false")
        return default
    return value


def _settings(ctx: LayerContext, class_name: str, get: Callable[[str, Any], Any], *, keras2_bidi: bool = False
              ) -> _Settings:
    cell = RNN_CLASSES[class_name]
    policy = get("dtype", "float32")
    if policy not in (None, "float32", "float64"):
        ctx.refuse(f"unsupported dtype policy {policy!r}", field="dtype", value=policy,
                   supported="'float32' or 'float64' (mixed precision changes the math)")
    units = get("units", None)
    if not isinstance(units, int) or isinstance(units, bool) or units < 1:
        ctx.refuse(f"invalid units {units!r}", field="units", value=units, supported="a positive int")
        raise Unconvertible
    activation = _cell_activation(ctx, "activation", get("activation", "tanh"))
    recurrent = "linear"
    if cell != "simple":
        recurrent = _cell_activation(ctx, "recurrent_activation", get("recurrent_activation", "sigmoid"))
    if _flag(ctx, get, "stateful", False):
        ctx.refuse("stateful=True keeps state between calls; keydnn models are stateless", field="stateful",
                   value=True, supported="stateful=False (pass the state explicitly with initial_state)")
    if _flag(ctx, get, "time_major", False):
        ctx.refuse("time_major=True puts the time axis first; keydnn models take the batch first",
                   field="time_major", value=True, supported="time_major=False")
    for key in ("dropout", "recurrent_dropout"):  # only act in training
        value = get(key, 0.0)
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0 <= value <= 1:
            ctx.refuse(f"invalid {key} {value!r}", field=key, value=value, supported="a number in [0, 1]")
    return_sequences = _flag(ctx, get, "return_sequences", False)
    zero_default = return_sequences if keras2_bidi else False
    return _Settings(
        cell=cell, units=units, activation=activation, recurrent_activation=recurrent,
        use_bias=_flag(ctx, get, "use_bias", True), return_sequences=return_sequences,
        return_state=_flag(ctx, get, "return_state", False), go_backwards=_flag(ctx, get, "go_backwards", False),
        reset_after=_flag(ctx, get, "reset_after", ctx.options.keras_major >= 3) if cell == "gru" else False,
        zero_output_for_mask=_flag(ctx, get, "zero_output_for_mask", zero_default),
    )


_ROLES = {"kernel": 0, "recurrent_kernel": 1, "bias": 2, "var0": 0, "var1": 1, "var2": 2}


def _pick(ctx: LayerContext, weights: list[tuple[str, np.ndarray]], s: _Settings) -> list[np.ndarray]:
    """[kernel, recurrent_kernel, bias?] from weights named by their last path part (or var<i>)."""
    found: dict[int, np.ndarray] = {}
    for name, arr in weights:
        role = _ROLES.get(name.rsplit("/", 1)[-1])
        if role is not None:
            found[role] = np.asarray(arr)
    need = 3 if s.use_bias else 2
    if sorted(found) != list(range(need)):
        ctx.refuse(f"expected weights kernel, recurrent_kernel{', bias' if s.use_bias else ''}; "
                   f"layer has {[n for n, _ in weights]}")
        raise Unconvertible
    return [found[i] for i in range(need)]


def _emit_on(ctx: LayerContext, x: str, op: Any, *operands: str, suffix: str) -> str:
    ctx.x_type = ctx.x_type if x == ctx.x else ctx._type_of(x)
    ctx.x = x
    return ctx.emit(op, *operands, suffix=suffix)


def _recurrence(ctx: LayerContext, s: _Settings, arrays: list[np.ndarray], x: str, states: list[str], tag: str,
                *, restore: bool = False, results: tuple[str, ...] = ("output",)) -> dict[str, str]:
    """Emit the projection and one rnn node per wanted result; {result: value}."""
    x_type = ctx.x_type if x == ctx.x else ctx._type_of(x)
    if x_type is None:
        ctx.need_type()
    assert x_type is not None
    if x_type.rank != 3:
        ctx.refuse(f"expects a (batch, time, features) input, got {x_type}")
        raise Unconvertible
    g = len(CELL_GATES[s.cell])
    n = s.units
    kernel, rec = arrays[0], arrays[1]
    if kernel.shape != (x_type.shape[2], g * n) or rec.shape != (n, g * n):
        ctx.refuse(f"weights {list(kernel.shape)} / {list(rec.shape)} do not fit {n} units of a {s.cell} cell "
                   f"on {x_type.shape[2]} features")
        raise Unconvertible
    in_bias = rec_bias = np.zeros(g * n)
    if s.use_bias:
        bias = arrays[2]
        if s.cell == "gru" and s.reset_after:
            if bias.shape != (2, g * n):
                ctx.refuse(f"a reset_after GRU bias is (2, {g * n}), got {list(bias.shape)}")
                raise Unconvertible
            in_bias, rec_bias = bias[0], bias[1]
        elif bias.shape != (g * n,):
            ctx.refuse(f"bias must be ({g * n},), got {list(bias.shape)}")
            raise Unconvertible
        else:
            in_bias = bias
    p = f"{tag}." if tag else ""
    operands = [ctx.add_constant(f"{p}kernel", kernel)]
    if s.use_bias:
        operands.append(ctx.add_constant(f"{p}input_bias", in_bias))
    proj = _emit_on(ctx, x, Dense(), *operands, suffix=f"{p}projection")
    u = ctx.add_constant(f"{p}recurrent_kernel", rec)
    rb = ctx.add_constant(f"{p}recurrent_bias", rec_bias)
    extra = ([ctx.in_mask] if ctx.in_mask else []) + list(states)
    out: dict[str, str] = {}
    # The last output is the final h unless padding can make them differ (a zeroed output after trailing
    # padding, or an all-padding row whose h is a given initial state): then one node serves both.
    same_h = not s.return_sequences and (not ctx.in_mask or (not s.zero_output_for_mask and not states))
    for result in results:
        if result == "state_h" and same_h and "output" in out:
            out[result] = out["output"]
            continue
        op = Rnn(cell=s.cell, units=n, gate_order=CELL_GATES[s.cell], activation=s.activation,
                 recurrent_activation=s.recurrent_activation, reset_after=s.reset_after, go_backwards=s.go_backwards,
                 restore_time_order=restore and s.go_backwards and s.return_sequences and result == "output",
                 return_sequences=s.return_sequences, zero_output_for_mask=s.zero_output_for_mask, result=result,
                 masked=bool(ctx.in_mask), initial_states=len(states))
        out[result] = _emit_on(ctx, proj, op, u, rb, *extra, suffix=f"{p}{result}" if tag or result != "output"
                               else None)
    return out


def _state_names(s: _Settings) -> tuple[str, ...]:
    return ("state_h", "state_c") if s.cell == "lstm" else ("state_h",)


def _initial_states(ctx: LayerContext, s: _Settings, given: list[str]) -> list[str]:
    want = len(_state_names(s))
    if given and len(given) != want:
        ctx.refuse(f"initial_state has {len(given)} tensor(s); a {s.cell} cell takes {want}", field="initial_state")
        raise Unconvertible
    return given


def _finish(ctx: LayerContext, main: str, extras: list[str], return_sequences: bool) -> None:
    ctx.x, ctx.x_type = main, ctx._type_of(main)
    if isinstance(ctx, GraphLayerContext):
        ctx.extra_results = extras
        ctx.out_mask = ctx.in_mask if return_sequences else None


def _convert_rnn(ctx: LayerContext) -> None:
    check_dtype_policy(ctx)
    s = _settings(ctx, ctx.layer.class_name, _top_fields(ctx))
    arrays = _pick(ctx, list(ctx.layer.weights), s)
    given = list(getattr(ctx, "inputs", ())[1:])
    states = _initial_states(ctx, s, given)
    wanted = ("output",) + (_state_names(s) if s.return_state else ())
    res = _recurrence(ctx, s, arrays, ctx.x, states, "", results=wanted)
    _finish(ctx, res["output"], [res[k] for k in wanted[1:]], s.return_sequences)


_RNN_DOC = ("{cls}: units, activation{ra}, use_bias, return_sequences, return_state (one output per state), "
            "go_backwards, initial_state (functional), masks from Embedding(mask_zero=True)/Masking "
            "(zero_output_for_mask as configured){gru}; unroll and Keras 2 implementation are the same math; "
            "dropout/recurrent_dropout are identities at inference; stateful=True and time_major=True are "
            "refused; any sequence length (a symbolic time axis)")
for _cls, _ra, _gru in (("SimpleRNN", "", ""), ("LSTM", ", recurrent_activation", ""),
                        ("GRU", ", recurrent_activation", "; reset_after true and false")):
    register_converter(_cls, constraints=_RNN_DOC.format(cls=_cls, ra=_ra, gru=_gru).split(": ", 1)[1])(_convert_rnn)


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


@register_converter("Embedding", constraints=(
    "integer (any integer dtype) or integral float ids; mask_zero (a mask for the layers after it); an index "
    "outside [0, input_dim) is an error at run time"))
def convert_embedding(ctx: LayerContext) -> None:
    check_dtype_policy(ctx)
    x = ctx.need_type()
    vocab, dim = ctx.cfg("input_dim"), ctx.cfg("output_dim")
    mask_zero = ctx.check_in("mask_zero", (False, True), False)
    ctx.cfg("input_length")  # Keras 2: the declared length, already in the input shape
    ctx.require(ctx.cfg("sparse", False) in (False, None), "sparse gradients option", field="sparse")
    ctx.require(ctx.cfg("lora_rank") is None, "LoRA embeddings are not supported", field="lora_rank",
                value=ctx.layer.config.get("lora_rank"), supported="lora_rank=None")
    ctx.require(ctx.cfg("quantization_config") is None, "quantized embeddings are not supported",
                field="quantization_config", supported="quantization_config=None")
    ctx.ignore("lora_alpha", "embeddings_initializer", "embeddings_regularizer", "embeddings_constraint")
    table = ctx.weight("embeddings")
    if table.shape != (vocab, dim):
        ctx.refuse(f"embeddings weight is {list(table.shape)}, config says ({vocab}, {dim})")
        raise Unconvertible
    ids = ctx.x
    out = ctx.emit(Embedding(), ctx.add_constant("embeddings", table))
    if mask_zero:
        if x.rank != 2:
            ctx.refuse(f"mask_zero needs (batch, time) ids, got {x}", field="mask_zero", value=True)
            raise Unconvertible
        mask = _emit_on(ctx, ids, SequenceMask(mask_value=0.0, dtype=ctx.options.dtype), suffix="mask")
        ctx.x, ctx.x_type = out, ctx._type_of(out)
        if isinstance(ctx, GraphLayerContext):
            ctx.out_mask = mask


@register_converter("Masking", constraints="mask_value (any number): zeroes the masked steps and masks the layers "
                                           "after it")
def convert_masking(ctx: LayerContext) -> None:
    check_dtype_policy(ctx)
    value = ctx.cfg("mask_value", 0.0)
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        ctx.refuse(f"invalid mask_value {value!r}", field="mask_value", value=value, supported="a number")
        raise Unconvertible
    x = ctx.x
    mask = _emit_on(ctx, x, SequenceMask(mask_value=float(value), dtype=ctx.options.dtype), suffix="mask")
    out = _emit_on(ctx, x, Masking(mask_value=float(value)), suffix=None)
    ctx.x, ctx.x_type = out, ctx._type_of(out)
    if isinstance(ctx, GraphLayerContext):
        ctx.out_mask = mask


@register_converter("RepeatVector", constraints="any n")
def convert_repeat_vector(ctx: LayerContext) -> None:
    check_dtype_policy(ctx)
    n = ctx.cfg("n")
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        ctx.refuse(f"invalid n {n!r}", field="n", value=n, supported="a positive int")
        raise Unconvertible
    ctx.emit(RepeatVector(n=n))


#: Layers TimeDistributed applies directly on the (N, T, ...) tensor: they act on the last axis only.
_PER_STEP = ("Dense", "Activation", "Dropout", "ReLU", "LeakyReLU", "ELU", "Softmax", "PReLU")
#: Layers TimeDistributed cannot wrap: they keep state across calls or are wrappers/models themselves.
_NOT_PER_STEP = frozenset(RNN_CLASSES) | {"Bidirectional", "TimeDistributed", "RNN", "Sequential", "Functional",
                                         "Model", "Embedding"}


@register_converter("TimeDistributed", constraints=(
    "over any supported layer but recurrent ones and models: " + ", ".join(_PER_STEP) + " run on the sequence "
    "directly; any other layer (Conv2D, Flatten, pooling, ...) on time folded into the batch "
    "(fold_time / unfold_time views); a mask passes through"))
def convert_time_distributed(ctx: LayerContext) -> None:
    from keydnn.frontends.keras.reader import _canonical_weight_name, _positional_layout, normalize_layer_config

    check_dtype_policy(ctx)
    entry = ctx.cfg("layer")
    cls = entry.get("class_name") if isinstance(entry, dict) else None
    if cls not in CONVERTERS or cls in _NOT_PER_STEP:
        ctx.refuse(f"TimeDistributed over {cls!r} is not supported", field="layer", value=cls,
                   supported="a supported layer that is not recurrent, a wrapper or a model")
        raise Unconvertible
    config = normalize_layer_config(entry.get("config") or {})
    names = (_positional_layout(cls, config) or {}).get("", [])
    weights = []
    for name, arr in ctx.layer.weights:
        short = name.rsplit("/", 1)[-1]
        if short.startswith("var") and short[3:].isdigit() and int(short[3:]) < len(names):
            short = names[int(short[3:])]
        weights.append((_canonical_weight_name(cls, short), arr))
    x_type = ctx.need_type()
    if x_type.rank < 3:
        ctx.refuse(f"TimeDistributed needs a (batch, time, ...) input, got {x_type}")
        raise Unconvertible
    seq = ctx.x
    fold = cls not in _PER_STEP
    if fold:
        _emit_on(ctx, seq, FoldTime(), suffix="fold")
    inner = LayerSpec(index=ctx.layer.index, class_name=cls, name=ctx.layer.name, config=config,
                      weights=tuple(weights))
    sub = LayerContext(layer=inner, x=ctx.x, x_type=ctx.x_type, options=ctx.options, problems=ctx.problems,
                       nodes=ctx.nodes, weights=ctx.weights)
    sub._node_name = lambda suffix: ctx._node_name("inner" if suffix is None else f"inner.{suffix}")  # type: ignore
    before = len(ctx.nodes)
    CONVERTERS[cls].fn(sub)
    for key in sub.unconsumed():
        ctx.refuse(f"layer config field {key!r} is not understood by keydnn", field=key,
                   value=config.get(key), supported="the fields documented for this layer")
    for node in ctx.nodes[before:]:
        ctx._emitted(node.name, node.outputs[0].type)
    ctx.x, ctx.x_type = sub.x, sub.x_type
    if fold:
        _emit_on(ctx, sub.x, UnfoldTime(), seq, suffix=None)
    if isinstance(ctx, GraphLayerContext):
        ctx.out_mask = ctx.in_mask


#: Keras cell class -> the layer class with the same math.
_CELL_LAYERS = {"SimpleRNNCell": "SimpleRNN", "LSTMCell": "LSTM", "GRUCell": "GRU"}
_WRAPPER_FIELDS = ("return_sequences", "return_state", "go_backwards", "stateful", "time_major",
                   "zero_output_for_mask")
MULTI_INPUT_LAYERS.add("RNN")


def _cell_weights(ctx: LayerContext, cells: list[tuple[str, dict]], keras2: bool) -> list[list[tuple[str, Any]]]:
    """Each stacked cell's weights: h5 groups them by the cell's name, .keras by its class key (lstm_cell_1)."""
    from keydnn.frontends.keras.reader import _snake_case

    if len(cells) == 1:
        return [list(ctx.layer.weights)]
    used: dict[str, int] = {}
    groups = []
    for cls, cfg in cells:
        base = _snake_case(cls, keras2)
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
