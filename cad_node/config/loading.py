"""Reading the node's settings from YAML, with messages that name the file, key and line.

:func:`load_settings` turns any problem into a :class:`~cad_node.errors.ConfigError`
whose message names the file, the key path and the line, e.g.
``config/node.yaml: destinations.pacs.port: Input should be a valid integer ...
(got 'abc') [line 31]``.

Relative paths: ``rules`` (when a path) is read relative to the config file;
``storage_dir`` and ``models_dir`` relative to the working directory, like any
command-line tool's paths.
"""

import difflib
from collections.abc import Mapping, Sequence
from importlib import resources
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, TypeAdapter, ValidationError
from pydantic_core import ErrorDetails

from cad_node.config.settings import (
    DESTINATION_TAG_PREFIX,
    DestinationSettings,
    PeerSettings,
    Settings,
)
from cad_node.errors import ConfigError
from cad_node.routing.rules import TAG_PREFIX, Rule, check_rule_set

DEFAULT_CONFIG = "default_config.yaml"
"""The embedded defaults (package data), used when no ``--config`` is given."""


class _UniqueKeyLoader(yaml.SafeLoader):
    """A safe loader that refuses a key written twice (PyYAML keeps the last silently)."""


def _construct_unique_mapping(loader: yaml.SafeLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    seen: set[object] = set()
    for key_node, _value_node in node.value:
        key = loader.construct_object(key_node)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"key {key!r} is written twice", key_node.start_mark
            )
        seen.add(key)
    return loader.construct_mapping(node)


_UniqueKeyLoader.add_constructor(
    yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG,
    _construct_unique_mapping,
)


def load_settings(path: Path | None) -> Settings:
    """The settings in the YAML file ``path``, or the embedded defaults when ``None``.

    Raises
    ------
    ConfigError
        The file is missing, is not YAML, or a key is invalid or unknown; the
        message names the file, the key path and the line.
    """
    if path is None:
        resource = resources.files("cad_node").joinpath(DEFAULT_CONFIG)
        with resources.as_file(resource) as default_path:
            return _load_settings_file(default_path, shown_as=f"<embedded {DEFAULT_CONFIG}>")
    return _load_settings_file(path, shown_as=str(path))


def _load_settings_file(path: Path, shown_as: str) -> Settings:
    text = _read_text(path, shown_as)
    data, root = _parse_yaml(text, shown_as)
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{shown_as}: the top level must be a mapping of keys")
    if isinstance(data.get("rules"), str):
        data = {**data, "rules": load_rules(path.parent / data["rules"])}
    try:
        return Settings.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, shown_as, root)) from exc


def load_rules(path: Path) -> tuple[Rule, ...]:
    """The rules in the YAML file ``path`` (a list of rules), checked.

    Raises
    ------
    ConfigError
        Naming the rules file, the rule's index and key path, and the line.
    """
    text = _read_text(path, str(path))
    data, root = _parse_yaml(text, str(path))
    return parse_rules([] if data is None else data, str(path), root)


_RULES = TypeAdapter(tuple[Rule, ...])


def parse_rules(
    data: object, source: str = "rules", root: yaml.Node | None = None
) -> tuple[Rule, ...]:
    """``data`` (a list of rule mappings, e.g. from YAML or JSON) as checked rules.

    Raises
    ------
    ConfigError
        A rule is invalid, or two rules share a name; ``source`` names the origin.
    """
    if not isinstance(data, list):
        raise ConfigError(f"{source}: rules must be a list of rules")
    try:
        return check_rule_set(_RULES.validate_python(data))
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, source, root)) from exc
    except ValueError as exc:
        raise ConfigError(f"{source}: {exc}") from exc


def _read_text(path: Path, shown_as: str) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise ConfigError(f"{shown_as}: file not found") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{shown_as}: cannot read: {exc}") from exc


def _parse_yaml(text: str, shown_as: str) -> tuple[object, yaml.Node | None]:
    """The data and the node tree (for line numbers) of a YAML document."""
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.load(text, Loader=_UniqueKeyLoader)  # a SafeLoader subclass
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f" line {mark.line + 1}, column {mark.column + 1}:" if mark else ""
        raise ConfigError(f"{shown_as}:{where} invalid YAML: {exc.problem or exc}") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"{shown_as}: invalid YAML: {exc}") from exc
    return data, root


# -- error messages ----------------------------------------------------------------------


def format_validation_error(
    exc: ValidationError, source: str, root: yaml.Node | None = None
) -> str:
    """One line per error: ``source: key.path: message (got value) [line N]``."""
    return "\n".join(_format_error(error, source, root) for error in exc.errors())


def _format_error(error: ErrorDetails, source: str, root: yaml.Node | None) -> str:
    tags = (TAG_PREFIX, DESTINATION_TAG_PREFIX)
    loc = [part for part in error["loc"] if not str(part).startswith(tags)]
    where = format_location(loc) or "(top level)"
    message = error["msg"].removeprefix("Value error, ")
    if error["type"] == "extra_forbidden":
        message = f"{message}: {loc[-1]!r}{_suggestion(loc)}"
    elif _shows_input(error, loc):
        message = f"{message} (got {error.get('input')!r})"
    line = _line_of(root, loc)
    suffix = f" [line {line}]" if line is not None else ""
    return f"{source}: {where}: {message}{suffix}"


def _shows_input(error: ErrorDetails, loc: Sequence[int | str]) -> bool:
    # A whole list or mapping, a missing key or the rules list (a path, say) says nothing useful.
    value = error.get("input")
    scalar = not isinstance(value, dict | list | tuple)
    return error["type"] != "missing" and scalar and list(loc) != ["rules"]


def format_location(loc: Sequence[int | str]) -> str:
    """``("destinations", "pacs", "port")`` as ``destinations.pacs.port``; indexes as ``[0]``."""
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


def _suggestion(loc: Sequence[int | str]) -> str:
    known = _known_keys(loc[:-1])
    close = difflib.get_close_matches(str(loc[-1]), known, n=1, cutoff=0.5)
    return f" (did you mean {close[0]!r}?)" if close else ""


_NAMED_ITEMS: Mapping[str, type[BaseModel]] = {
    "destinations": DestinationSettings,
    "rules": Rule,
    "peers": PeerSettings,
}
"""Top-level keys whose values map a free name (or an index) to one model each."""


def _known_keys(parent: Sequence[int | str]) -> list[str]:
    """The keys allowed at ``parent`` (for "did you mean"); empty where keys are free."""
    model: type[BaseModel] = Settings
    parts = list(parent)
    while parts:
        part = str(parts.pop(0))
        if part in _NAMED_ITEMS and model is Settings:
            if not parts:
                return []
            parts.pop(0)
            model = _NAMED_ITEMS[part]
            continue
        field = model.model_fields.get(part)
        annotation = None if field is None else field.annotation
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return []
        model = annotation
    return list(model.model_fields)


def _line_of(root: yaml.Node | None, loc: Sequence[int | str]) -> int | None:
    """The 1-based line of the deepest key or item on ``loc`` found in the YAML node tree."""
    node, line = root, None
    for part in loc:
        child, key_line = (None, None) if node is None else _child(node, part)
        if child is None:
            break
        node = child
        line = key_line if key_line is not None else child.start_mark.line + 1
    return line


def _child(node: yaml.Node, part: int | str) -> tuple[yaml.Node | None, int | None]:
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            if key_node.value == str(part):
                return value_node, key_node.start_mark.line + 1
    if isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
        child: yaml.Node = node.value[part]
        return child, None
    return None, None
