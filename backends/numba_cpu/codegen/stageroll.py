"""A stage's text -> its template: numbers become parameters, and runs of same-shaped statements become loops.

Emitters unroll: a convolution writes one helper call (or one small loop of
them) per kernel column or per output-channel group, a concatenation one copy
per input. After its numbers become parameters, such a stage is a run of
identical statements whose length depends on the layer: every length would be
another stage function, and numba's compile time grows with every statement.
So a run of two or more sibling statements (a line with the lines indented
below it) that are identical up to their numbers is written once, in a loop
over the run: ``for k_rep in range(count)``, each pass reading its own
parameters (``base + k_rep * width + j``). The statements run in the same
order with the same values as unrolled; a statement that holds ``break``,
``continue`` or ``return`` is never rolled (it would leave the wrong loop).

Layout of the int parameters: first those at fixed positions (numbers outside
runs, and per run its count and the start of its parameters), then the runs'
own parameters. Positions in the template text therefore depend only on its
shape, never on a run's length, which is a parameter like any other number.
"""

from __future__ import annotations

import re
from typing import Optional, Union

__all__ = ["stage_parameters"]

#: The tokens looked at: a string (refused), a name (whole, so digits inside names stay), a number.
_TOKEN = re.compile(r"""(?P<str>'[^'\\]*'|"[^"\\]*")|(?P<name>[A-Za-z_]\w*)"""
                    r"|(?P<num>(?:\d+\.\d*|\.\d+)(?:[eE][+-]?\d+)?|\d+[eE][+-]?\d+|\d+)")
_EXITS = re.compile(r"\b(break|continue|return|yield)\b")

Piece = Union[str, tuple[str, int]]  # text, or ("i" | "f" | "a", index among the line's ints / floats)


class _Line:
    """One line split into text and parameters (local indices)."""

    def __init__(self, pieces: list[Piece], ints: list[int], floats: list[float]) -> None:
        self.pieces, self.ints, self.floats = pieces, ints, floats
        self.shape = tuple(p if isinstance(p, str) else p[0] for p in pieces)
        #: the text with ``{}`` where the parameters go, and the parameters in order: rendering is one ``format``
        self.fmt = "".join(p.replace("{", "{{").replace("}", "}}") if isinstance(p, str) else "{}" for p in pieces)
        self.slots = [p for p in pieces if not isinstance(p, str)]


#: Only the tokens that become pieces (strings, to refuse; ``p_`` names; numbers not inside a name): names are
#: skipped by the regex engine instead of one Python step each (most tokens are names; generating NASNetMobile's
#: 10,000 stage lines spent most of its warm start's code generation here).
_PIECES = re.compile(r"""(?P<str>'[^'\\]*'|"[^"\\]*")|(?<![A-Za-z0-9_])(?:p_(?P<arr>\w+)"""
                     r"|(?P<num>(?:\d+\.\d*|\.\d+)(?:[eE][+-]?\d+)?|\d+[eE][+-]?\d+|\d+))")


def _split(line: str, arrays: dict[str, int]) -> Optional[_Line]:
    hash_at = line.find("#")
    if hash_at >= 0 and _TOKEN.search(line, hash_at):  # a comment (or a '#' in a string) before a token
        return None
    pieces: list[Piece] = []
    ints: list[int] = []
    floats: list[float] = []
    col = 0
    for m in _PIECES.finditer(line):
        kind = m.lastgroup
        if kind == "str":
            return None
        if kind == "num":
            tok = m.group()
            if "." in tok or "e" in tok or "E" in tok:
                piece: Piece = ("f", len(floats))
                floats.append(float(tok))
            else:
                piece = ("i", len(ints))
                ints.append(int(tok))
        else:
            slot = arrays.get(m.group("arr"))
            if slot is None:
                continue
            piece = ("a", len(ints))
            ints.append(slot)
        start = m.start()
        pieces.append(line[col:start])
        pieces.append(piece)
        col = m.end()
    pieces.append(line[col:])
    return _Line(pieces, ints, floats)


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip(" "))


def _blocks(lines: list[_Line], raw: list[str]) -> list[tuple[list[_Line], list[str]]]:
    """Sibling statements: each line at the first line's indentation with the deeper lines after it."""
    out: list[tuple[list[_Line], list[str]]] = []
    top = _indent(raw[0])
    for ln, text in zip(lines, raw):
        if _indent(text) <= top or not out:
            out.append(([ln], [text]))
        else:
            out[-1][0].append(ln)
            out[-1][1].append(text)
    return out


class _Writer:
    def __init__(self) -> None:
        self.fixed_i: list[int] = []
        self.fixed_f: list[float] = []
        self.runs: list[tuple[int, list[int], list[float]]] = []  # (fixed slot of the run's count, ints, floats)
        self.lines: list[str] = []

    def plain(self, ln: _Line) -> None:
        bi, bf = len(self.fixed_i), len(self.fixed_f)
        self.fixed_i += ln.ints
        self.fixed_f += ln.floats
        self.lines.append(ln.fmt.format(*[
            f"ld_i64(k_qi, {bi + j})" if k == "i" else f"ld_f64(k_qf, {bf + j})" if k == "f"
            else f"ld_i64(k_pa, ld_i64(k_qi, {bi + j}))" for k, j in ln.slots]))

    def run(self, blocks: list[list[_Line]], pad: str) -> None:
        r = len(self.runs)
        width_i = sum(len(ln.ints) for ln in blocks[0])
        width_f = sum(len(ln.floats) for ln in blocks[0])
        slot = len(self.fixed_i)
        self.fixed_i += [len(blocks), 0, 0]  # count, start of its ints, of its floats (set by ``finish``)
        self.runs.append((slot, [v for blk in blocks for ln in blk for v in ln.ints],
                          [v for blk in blocks for ln in blk for v in ln.floats]))
        self.lines += [f"{pad}k_b{r} = ld_i64(k_qi, {slot + 1})",
                       f"{pad}k_c{r} = ld_i64(k_qi, {slot + 2})",
                       f"{pad}for k_rep{r} in range(ld_i64(k_qi, {slot})):"]
        oi = of = 0
        for ln in blocks[0]:
            i0, f0 = oi, of
            self.lines.append("    " + _render(
                ln, lambda j, i0=i0: f"ld_i64(k_qi, k_b{r} + k_rep{r} * {width_i} + {i0 + j})",
                lambda j, f0=f0: f"ld_f64(k_qf, k_c{r} + k_rep{r} * {width_f} + {f0 + j})"))
            oi += len(ln.ints)
            of += len(ln.floats)

    def finish(self) -> tuple[list[str], list[int], list[float]]:
        ints, floats = list(self.fixed_i), list(self.fixed_f)
        for slot, run_ints, run_floats in self.runs:
            ints[slot + 1], ints[slot + 2] = len(ints), len(floats)
            ints += run_ints
            floats += run_floats
        return self.lines, ints, floats


def _render(ln: _Line, int_at, float_at) -> str:
    return ln.fmt.format(*[int_at(j) if k == "i" else float_at(j) if k == "f" else f"ld_i64(k_pa, {int_at(j)})"
                           for k, j in ln.slots])


def _walk(writer: _Writer, lines: list[_Line], raw: list[str]) -> None:
    blocks = _blocks(lines, raw)
    i = 0
    while i < len(blocks):
        shape = [ln.shape for ln in blocks[i][0]]
        j = i + 1
        while j < len(blocks) and [ln.shape for ln in blocks[j][0]] == shape:
            j += 1
        if j - i >= 2 and not any(_EXITS.search(t) for t in blocks[i][1]):
            writer.run([b[0] for b in blocks[i:j]], " " * _indent(blocks[i][1][0]))
        else:
            for blk_lines, blk_raw in blocks[i:j]:
                writer.plain(blk_lines[0])
                if len(blk_lines) > 1:
                    _walk(writer, blk_lines[1:], blk_raw[1:])
        i = j


#: Parsed lines by text (and, for a line naming arrays, the array slots): a graph's stages repeat most of their
#: lines exactly (the claim loop, the block arithmetic), 15,000 lines of four application models are 3,400
#: distinct ones. ``_Line`` values are never modified after parsing, so they are shared.
_SPLIT_CACHE: dict = {}
_SPLIT_CACHE_SIZE = 1 << 16
_MISSING = object()


def stage_parameters(lines: list[str], arrays: dict[str, int]) -> Optional[tuple[list[str], list[int],
                                                                                   list[float]]]:
    """(template lines, int parameters, float parameters) of a stage's lines; None for a line with something
    unexpected (a string, a comment). ``arrays``: array name -> its slot in the address vector."""
    akey = tuple(sorted(arrays.items()))
    split = []
    for line in lines:
        key = (line, akey) if "p_" in line else line
        ln = _SPLIT_CACHE.get(key, _MISSING)
        if ln is _MISSING:
            if len(_SPLIT_CACHE) >= _SPLIT_CACHE_SIZE:
                _SPLIT_CACHE.clear()
            ln = _SPLIT_CACHE[key] = _split(line, arrays)
        split.append(ln)
    if any(ln is None for ln in split) or not lines:
        return None
    writer = _Writer()
    _walk(writer, split, lines)  # type: ignore[arg-type]
    return writer.finish()
