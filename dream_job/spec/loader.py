"""Read a YAML file into a pydantic model: `--set` overrides and errors that name key, line and fix.

`dream_job.spec.load_spec` calls it with `JobSpec`; this module knows no spec of its own, so the
spec imports its loader and not the other way round. PyYAML is used with YAML 1.2 floats (`1e-5`
is a number); each key path is mapped to its line, so a validation error says `file:line` (or the
`--set` flag it came from), the value got, what is allowed, and the closest key for typos.
"""

from __future__ import annotations

import difflib
import re
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from dream_job.errors import SpecError


class _Loader(yaml.SafeLoader):
    """SafeLoader that reads `1e-5` as a float (YAML 1.2), not a string as PyYAML's YAML 1.1 does."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:\d+\.\d*|\.\d+|\d+)(?:[eE][-+]?\d+)?$|^[-+]?\d+[eE][-+]?\d+$"),
    list("-+0123456789."),
)


def _key_lines(text: str, source: Path | None = None) -> dict[tuple[str, ...], int]:
    """Map each key path of a YAML document to its 1-based line number.

    Raises:
        SpecError: A key appears twice in one mapping (PyYAML would silently keep the last one,
            so a second `train:` section would reset every train setting of the first).
    """
    lines: dict[tuple[str, ...], int] = {}

    def walk(node: yaml.Node, path: tuple[str, ...]) -> None:
        if isinstance(node, yaml.MappingNode):
            for key_node, value_node in node.value:
                key_path = (*path, str(key_node.value))
                line = key_node.start_mark.line + 1
                if key_path in lines:
                    key = ".".join(key_path)
                    raise SpecError(
                        f"`{key}` appears twice in `{source}` (lines {lines[key_path]} and {line})",
                        key=key, path=f"{source}:{line}",
                        hint="merge the two into one; YAML would keep only the second",
                    )
                lines[key_path] = line
                walk(value_node, key_path)

    root = yaml.compose(text, Loader=_Loader)
    if root is not None:
        walk(root, ())
    return lines


def parse_override(text: str) -> tuple[list[str], Any]:
    """Split `a.b.c=value` into its key path and the YAML-parsed value.

    Raises:
        SpecError: The text has no `=` or an empty key.
    """
    key, sep, raw = text.partition("=")
    if not sep or not key.strip() or any(not part for part in key.strip().split(".")):
        raise SpecError(
            f"`--set {text}` is not of the form `a.b.c=value`",
            value=text, hint="for example `--set train.epochs=1`",
        )
    try:
        value = yaml.load(raw, Loader=_Loader) if raw.strip() else ""
    except yaml.YAMLError as exc:
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise SpecError(
            f"the value of `--set {text}` is not valid YAML ({problem})",
            key=key.strip(), value=raw,
            hint=f"quote or complete it, for example `--set '{key.strip()}=[0.9, 0.95]'` for a list",
        ) from None
    return key.strip().split("."), value


def _apply_override(data: dict[str, Any], path: list[str], value: Any, text: str) -> None:
    """Set `value` at `path` in `data`, creating sections on the way.

    Raises:
        SpecError: A part of the path holds a value, not a section (`--set train.epochs.x=1`).
    """
    node = data
    for depth, part in enumerate(path[:-1], start=1):
        child = node.get(part)
        if child is not None and not isinstance(child, dict):
            key = ".".join(path[:depth])
            shown = yaml.safe_dump(child, default_flow_style=True).strip().removesuffix("...").strip()
            raise SpecError(
                f"`--set {text}` goes below `{key}`, which holds the value `{shown}`, not a section of keys",
                key=".".join(path), value=text, hint=f"set the value itself, for example `--set {key}=...`",
            )
        if not isinstance(child, dict):
            child = {}
            node[part] = child
        node = child
    node[path[-1]] = value


def _section_fields(root: type[BaseModel], loc: tuple[str | int, ...]) -> list[str]:
    """Return the allowed keys of the section of `root` at `loc` (for typo suggestions)."""
    model = root
    for part in loc:
        field = model.model_fields.get(str(part))
        annotation = getattr(field, "annotation", None)
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return []
        model = annotation
    return list(model.model_fields)


def _describe_expected(error: dict[str, Any]) -> str:
    kind = error["type"]
    ctx = error.get("ctx", {})
    if kind == "literal_error":
        return f"one of {ctx.get('expected', '')}".replace("'", "`")
    if kind in {"int_type", "int_parsing", "int_from_float"}:
        return "an integer"
    if kind in {"float_type", "float_parsing"}:
        return "a number"
    if kind in {"bool_type", "bool_parsing"}:
        return "`true` or `false`"
    if kind == "string_type":
        return "a string"
    if kind == "list_type":
        return "a list"
    if kind in {"model_type", "model_attributes_type", "dict_type"}:
        return "a mapping of keys"
    message = str(error["msg"]).removeprefix("Input should be ").removeprefix("Value error, ")
    return message[0].lower() + message[1:]


def _format_error(root: type[BaseModel], error: dict[str, Any], where: str) -> tuple[str, str | None]:
    """Turn one pydantic error into (sentence, hint)."""
    loc = tuple(error["loc"])
    key = ".".join(str(p) for p in loc)
    got = error.get("input")
    if error["type"] == "extra_forbidden":
        allowed = _section_fields(root, loc[:-1])
        close = difflib.get_close_matches(str(loc[-1]), allowed, n=1, cutoff=0.6)
        prefix = ".".join(str(p) for p in loc[:-1])
        hint = f"did you mean `{prefix + '.' if prefix else ''}{close[0]}`?" if close else None
        if hint is None and allowed:
            hint = "allowed keys here: " + ", ".join(f"`{k}`" for k in allowed)
        return f"unknown key `{key}` in {where}", hint
    if error["type"] == "missing":
        return f"`{key}` is required in {where}", None
    if error["type"] == "value_error" and not loc:
        return f"{error['msg'].removeprefix('Value error, ')} in {where}", None
    if error["type"] == "value_error":
        return f"`{key}` in {where}: {error['msg'].removeprefix('Value error, ')}", None
    shown = yaml.safe_dump(got, default_flow_style=True).strip().removesuffix("...").strip()
    return f"`{key}` in {where} must be {_describe_expected(error)}, got `{shown}`", None


M = TypeVar("M", bound=BaseModel)


def load_yaml_model(model: type[M], path: str | Path, overrides: list[str] | None = None) -> M:
    """Read a YAML file, apply `--set` overrides and validate it into `model`.

    Args:
        model: The pydantic model of the whole file (`JobSpec`).
        path: The YAML file.
        overrides: `a.b.c=value` strings; values are parsed as YAML.

    Returns:
        The validated model.

    Raises:
        SpecError: The file is missing or not YAML, an override is malformed, or the content is
            invalid; the message names the key, `file:line` (or the `--set`), value and fix, and
            the error's `key` and `path` fields carry the first problem's key and `file:line`.
    """
    path = Path(path)
    if path.is_dir():
        raise SpecError(f"`{path}` is a folder, not a job file", path=path,
                        hint="pass a job file such as `jobs/smoke.yaml`")
    if not path.is_file():
        raise SpecError(f"job file `{path}` does not exist", path=path,
                        hint="pass a job file such as `jobs/smoke.yaml` (see `ls jobs/`)")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        line = path.read_bytes().count(b"\n", 0, exc.start) + 1
        raise SpecError(f"`{path}:{line}` is not UTF-8 text", path=f"{path}:{line}",
                        hint="save the job file as UTF-8") from None
    try:
        data = yaml.load(text, Loader=_Loader)
        lines = _key_lines(text, path)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f"{path}:{mark.line + 1}" if mark else str(path)
        raise SpecError(f"`{at}` is not valid YAML", path=at, caused_by=[str(exc).splitlines()[0]]) from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise SpecError(f"`{path}` must hold a mapping of sections (`name`, `model`, `data`, ...)", path=path)
    overridden: dict[tuple[str, ...], str] = {}
    for text_override in overrides or []:
        key_path, value = parse_override(text_override)
        _apply_override(data, key_path, value, text_override)
        overridden[tuple(key_path)] = text_override
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            loc = tuple(str(p) for p in error["loc"])
            source = next((overridden[loc[:i]] for i in range(len(loc), 0, -1) if loc[:i] in overridden), None)
            if source is None and loc:  # an override below the key that failed made it (`--set train.foo.x=1`)
                source = next((text for path, text in overridden.items() if path[:len(loc)] == loc), None)
            line = next((lines[loc[:i]] for i in range(len(loc), 0, -1) if loc[:i] in lines), None)
            file_at = None if source is not None else f"{path}:{line}" if line else str(path)
            where = f"`--set {source}`" if source is not None else f"`{file_at}`"
            # The value got, except where pydantic's input is the enclosing mapping, not a value.
            got = error.get("input") if loc and error["type"] != "missing" else None
            problems.append((*_format_error(model, error, where), ".".join(loc) or None, file_at, got))
        (first, hint, key, file_at, got), rest = problems[0], problems[1:]
        also = [f"also: {sentence}" + (f" ({h})" if h else "") for sentence, h, *_ in rest]
        raise SpecError(first, key=key, path=file_at, value=got, hint=hint, caused_by=also) from None
