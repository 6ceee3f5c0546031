"""Converters of the recurrent layers SimpleRNN, LSTM and GRU, and the helpers the wrappers
(``convert_rnn_wrappers``: Bidirectional, RNN) and ConvLSTM (``convert_conv_recurrent``) share.

A recurrent layer lowers to one ``dense`` node (the input projection of every
time step: one matrix product) and one ``rnn`` node per result it returns
(see ``keydnn.ir.ops.recurrent``). Masks are tracked by the driver
(``GraphLayerContext.in_mask`` / ``out_mask``): ``Embedding(mask_zero=True)``
and ``Masking`` make one (``convert_sequence``), recurrent layers consume it and
pass it on when they return sequences. ``initial_state`` tensors arrive as the call's further inputs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from keydnn.frontends.keras.activations import activation_op
from keydnn.frontends.keras.convert_core import check_dtype_policy
from keydnn.frontends.keras.lower import MULTI_INPUT_LAYERS, GraphLayerContext
from keydnn.frontends.keras.registry import TRAINING_ONLY_FIELDS, LayerContext, Unconvertible, register_converter
from keydnn.ir.ops import Dense
from keydnn.ir.ops.recurrent import CELL_GATES, Rnn

__all__ = ["RNN_CLASSES"]

#: Keras class -> cell kind.
RNN_CLASSES: dict[str, str] = {"SimpleRNN": "simple", "LSTM": "lstm", "GRU": "gru"}
MULTI_INPUT_LAYERS.update(RNN_CLASSES)

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
    ctx.x_type = ctx.x_type if x == ctx.x else ctx.type_of(x)
    ctx.x = x
    return ctx.emit(op, *operands, suffix=suffix)


def _recurrence(ctx: LayerContext, s: _Settings, arrays: list[np.ndarray], x: str, states: list[str], tag: str,
                *, restore: bool = False, results: tuple[str, ...] = ("output",)) -> dict[str, str]:
    """Emit the projection and one rnn node per wanted result; {result: value}."""
    x_type = ctx.x_type if x == ctx.x else ctx.type_of(x)
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
    ctx.x, ctx.x_type = main, ctx.type_of(main)
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
