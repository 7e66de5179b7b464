"""What the migrations need on a DuckLake: no PRIMARY KEY or UNIQUE, literal column defaults.

DuckLake refuses keys ("not supported in DuckLake"), and ``ALTER TABLE .. ADD COLUMN .. DEFAULT
false`` ("non-literal default value": it takes ``'false'``, the same value as a string literal);
everything else in the numbered files runs as written. The SQL is scanned into tokens so that strings, quoted names and comments are never
touched (a comment saying "unique per writer" stays), and each constraint is removed whole:

* in a column definition, ``PRIMARY KEY`` becomes ``NOT NULL`` (what the key implied besides
  uniqueness) and ``UNIQUE`` goes;
* as a table element, ``, [CONSTRAINT name] PRIMARY KEY (a, b)`` / ``, UNIQUE (a, b)``: the
  element goes with its comma and its parenthesised column list.

* in an ALTER TABLE statement, ``DEFAULT true`` / ``DEFAULT false``: the value is quoted.

The code must then keep the rules itself (it does: every insert that relied on a key checks first
or deletes first, the same statement on both stores).
"""

from __future__ import annotations

import re

_TOKEN = re.compile(
    r"""(?P<comment>--[^\n]*|/\*.*?\*/)
      |(?P<string>'(?:[^']|'')*'|"(?:[^"]|"")*")
      |(?P<ws>\s+)
      |(?P<word>[A-Za-z_][A-Za-z0-9_$]*)
      |(?P<other>.)""",
    re.VERBOSE | re.DOTALL,
)


def _tokens(sql: str) -> list[tuple[str, str]]:
    return [(m.lastgroup or "other", m.group()) for m in _TOKEN.finditer(sql)]


def _word(token: tuple[str, str], *names: str) -> bool:
    return token[0] == "word" and token[1].upper() in names


def for_ducklake(sql: str) -> str:
    tokens = _tokens(sql)
    code = [i for i, (kind, _) in enumerate(tokens) if kind not in ("ws", "comment")]
    drop: set[int] = set()
    quote: set[int] = set()
    replace: dict[int, str] = {}
    statement_start = 0

    def at(n: int) -> tuple[str, str]:
        return tokens[code[n]] if n < len(code) else ("end", "")

    n = 0
    while n < len(code):
        start = n
        if at(n) == ("other", ";"):
            statement_start = n + 1
        if (_word(at(n), "DEFAULT") and _word(at(n + 1), "TRUE", "FALSE")
                and _word(at(statement_start), "ALTER")):
            quote.add(code[n + 1])
        if at(n) == ("other", ","):
            n += 1
            if _word(at(n), "CONSTRAINT"):
                n += 2
            key_words = 2 if _word(at(n), "PRIMARY") and _word(at(n + 1), "KEY") else 1 if _word(at(n), "UNIQUE") else 0
            if key_words and at(n + key_words) == ("other", "("):
                n += key_words
                depth = 0
                while n < len(code):
                    depth += {"(": 1, ")": -1}.get(at(n)[1], 0) if at(n)[0] == "other" else 0
                    n += 1
                    if depth == 0:
                        break
                drop.update(range(code[start], code[n - 1] + 1))  # the comma through ")", comments too
                continue
            n = start + 1
            continue
        if _word(at(n), "PRIMARY") and _word(at(n + 1), "KEY"):
            replace[code[n]], replace[code[n + 1]] = "NOT", "NULL"
            n += 2
            continue
        if _word(at(n), "UNIQUE"):
            drop.add(code[n])
        n += 1
    return "".join(f"'{text.lower()}'" if i in quote else replace.get(i, text)
                   for i, (_, text) in enumerate(tokens) if i not in drop)
