"""YAML for a card's front matter, written by hand so manifest text cannot escape it.

Every string is a one-line double-quoted scalar: no text from a manifest can end the front
matter (`---`), start a mapping (`: `) or break a line.
"""

from __future__ import annotations

import json
import re
from typing import Any

# Characters a JSON string may carry raw that YAML readers refuse (C1 controls, BOM,
# non-characters, surrogates) or read as line breaks (NEL is in C1; LS, PS).
_YAML_UNSAFE = re.compile("[\x7f-\x9f\u2028\u2029\ufeff\ufffe\uffff\ud800-\udfff]")
_YAML_PLAIN_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_\-]*$")


def to_yaml(value: Any) -> str:
    """YAML for `value`: every string as a one-line double-quoted scalar, so no text from a
    manifest can end the front matter (`---`), start a mapping (`: `) or break a line.

    Mappings and lists come out in block style over several lines, for front matter.
    """
    if isinstance(value, dict | list) and value:
        return "\n".join(_yaml_lines(value, 0))
    return _yaml_scalar(value)


def _yaml_lines(value: dict[str, Any] | list[Any], indent: int) -> list[str]:
    pad = " " * indent
    lines: list[str] = []
    items = (
        [(f"{pad}{_yaml_key(k)}:", v) for k, v in value.items()]
        if isinstance(value, dict)
        else [(f"{pad}-", v) for v in value]
    )
    for head, item in items:
        if not (isinstance(item, dict | list) and item):
            lines.append(f"{head} {_yaml_scalar(item)}")
        elif head.endswith("-") and isinstance(item, dict):
            # "- key: value" keeps a list of mappings compact, as hub cards write it.
            nested = _yaml_lines(item, indent + 2)
            lines += [f"{pad}- {nested[0].lstrip()}", *nested[1:]]
        else:
            lines += [head, *_yaml_lines(item, indent + 2)]
    return lines


def _yaml_key(key: str) -> str:
    return key if _YAML_PLAIN_KEY.match(key) else _yaml_scalar(key)


def _yaml_scalar(value: Any) -> str:
    # JSON is a subset of YAML 1.2 except for the characters _YAML_UNSAFE escapes.
    text = json.dumps(value, ensure_ascii=False, allow_nan=False)
    return _YAML_UNSAFE.sub(lambda m: f"\\u{ord(m.group()):04x}", text)
