"""``rlkit config show CONFIG [overrides]``: the resolved config, every key with its value (defaults
included), the comment its dataclass field carries in rlkit/config.py, and ``(default)`` where the
value is the default.  Secrets are redacted as in the saved ``config.yaml``."""
from __future__ import annotations

import dataclasses
import inspect
import io
import re
import tokenize

import yaml

from rlkit import config as config_module
from rlkit.config import config_to_dict, redacted

_FIELD = re.compile(r"^\s+(\w+)\s*:")


def field_comments() -> dict[tuple[str, str], str]:
    """``{(dataclass name, field name): comment}`` from the trailing ``# ...`` of each field line
    (and the comment lines right below it that continue it)."""
    source = inspect.getsource(config_module)
    lines = source.splitlines()
    comments: dict[int, str] = {}
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT:
            comments[tok.start[0]] = tok.string.lstrip("# ").strip()
    out: dict[tuple[str, str], str] = {}
    current = None
    for number, line in enumerate(lines, start=1):
        if line.startswith("class "):
            current = line[6:].split("(")[0].split(":")[0].strip()
            continue
        match = _FIELD.match(line)
        if current and match and number in comments:
            text, follow = comments[number], number + 1
            while follow <= len(lines) and lines[follow - 1].strip().startswith("#") and \
                    lines[follow - 1].startswith(" " * (len(line) - len(line.lstrip()) + 4)):
                text += " " + comments.get(follow, "")
                follow += 1
            out[(current, match.group(1))] = text
    return out


def _scalar(value) -> str:
    return yaml.safe_dump(value, default_flow_style=True, width=10_000).strip().removesuffix("...").strip()


def render(cfg) -> str:
    """The YAML text of ``cfg`` with comments."""
    comments = field_comments()
    out: list[str] = []

    def walk(obj, indent: int) -> None:
        defaults = type(obj)()
        values = redacted(config_to_dict(obj))
        for f in dataclasses.fields(obj):
            value = getattr(obj, f.name)
            pad = "  " * indent
            note = comments.get((type(obj).__name__, f.name), "")
            if dataclasses.is_dataclass(value):
                out.append(f"{pad}{f.name}:" + (f"  # {note}" if note else ""))
                walk(value, indent + 1)
                continue
            default = " (default)" if value == getattr(defaults, f.name) else ""
            tail = f"  #{default} {note}".rstrip() if note or default else ""
            out.append(f"{pad}{f.name}: {_scalar(values[f.name])}{tail}")

    walk(cfg, 0)
    return "\n".join(out) + "\n"


def main(args) -> int:
    """``args.config`` (or None: the defaults) and ``args.overrides``; prints the config."""
    from rlkit.config import ConfigError, load_config

    config, overrides = args.config, list(args.overrides)
    if config is not None and "=" in config:  # no config file: the first word is an override
        config, overrides = None, [config, *overrides]
    try:
        cfg = load_config(config, overrides)
    except ConfigError as exc:
        import sys

        print(f"rlkit: {exc}", file=sys.stderr)
        return 2
    if getattr(args, "key", None):
        value = redacted(config_to_dict(cfg))
        for part in args.key.split("."):
            if not isinstance(value, dict) or part not in value:
                import sys

                print(f"rlkit: config show --key: no key {args.key!r}", file=sys.stderr)
                return 2
            value = value[part]
        print(value if isinstance(value, str) else _scalar(value))
        return 0
    print(render(cfg), end="")
    return 0
