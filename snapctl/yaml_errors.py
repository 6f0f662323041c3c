"""YAML with its line numbers, and pydantic's errors as one line that names ``file:line: field``:
the inventory's and the agent config's, and the plugins' blocks inside them."""

from __future__ import annotations

import gc
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from types import UnionType
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import yaml
from pydantic import AfterValidator, BaseModel, BeforeValidator, ValidationError

from snapctl.errors import RefusedValue

NOT_A_NUMBER = "expected a number, not a YAML boolean (yes/no, true/false, on/off)"
NOT_A_BOOLEAN = "expected true or false"


@contextmanager
def gc_paused() -> Iterator[None]:
    """No cyclic GC inside (nests): for bursts of objects that all stay alive, walked for nothing."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


class NumberTooLong(yaml.constructor.ConstructorError):
    """A whole number longer than Python converts (``sys.get_int_max_str_digits()``, 4300 digits):
    its ValueError came out of PyYAML as a traceback, and ``-o json`` gave no document."""

    def __init__(self, node: yaml.ScalarNode) -> None:
        super().__init__(problem="a whole number longer than Python reads", problem_mark=node.start_mark)
        self.node = node
        self.field = ""  # the key it is the value of, once found in the document (load_yaml_with_nodes)
        self.hint = "no setting takes a number that long: give the one meant, in a few digits"

    def __str__(self) -> str:
        digits = len(self.node.value.lstrip("+-").replace("_", ""))
        return (f"{self.field + ': ' if self.field else ''}a whole number of {digits} digits, "
                f"longer than Python reads ({sys.get_int_max_str_digits()} at most)")


def _int_or_too_long(loader: yaml.constructor.SafeConstructor, node: yaml.ScalarNode) -> int:
    try:
        return yaml.constructor.SafeConstructor.construct_yaml_int(loader, node)
    except ValueError as exc:
        raise NumberTooLong(node) from exc


class _Loader(getattr(yaml, "CSafeLoader", yaml.SafeLoader)):  # type: ignore[misc]
    """The safe loader (libyaml's when present), whose whole numbers fail as YAML errors do."""


_Loader.add_constructor("tag:yaml.org,2002:int", _int_or_too_long)


def load_yaml_with_nodes(text: str) -> tuple[yaml.Node | None, Any]:
    """The document's node tree (for line numbers in errors) and its data, from one parse with
    libyaml when present: a 1000-node inventory takes 1.5 s with the pure-Python parser, twice."""
    loader = _Loader(text)
    root = None
    try:
        root = loader.get_single_node()
        try:
            return root, (_construct_plain(loader, root, set()) if root is not None else None)
        except _NotPlain:
            return root, loader.construct_document(root)
    except NumberTooLong as exc:
        exc.field = dotted(_loc_of(root, exc.node) or ())
        raise
    finally:
        loader.dispose()


def _loc_of(node: yaml.Node | None, wanted: yaml.Node, seen: set[int] | None = None) -> tuple[str | int, ...] | None:
    """Where ``wanted`` is under ``node``, as a pydantic error's loc would say it."""
    if node is wanted:
        return ()
    seen = set() if seen is None else seen
    if id(node) in seen:  # an alias met again (a recursive one would never end)
        return None
    seen.add(id(node))
    pairs: list[tuple[Any, yaml.Node]] = []
    if isinstance(node, yaml.MappingNode):
        pairs = [(key.value if isinstance(key, yaml.ScalarNode) else "?", value) for key, value in node.value]
    elif isinstance(node, yaml.SequenceNode):
        pairs = list(enumerate(node.value))
    for part, child in pairs:
        found = _loc_of(child, wanted, seen)
        if found is not None:
            return (part, *found)
    return None


_MAP, _SEQ, _STR = "tag:yaml.org,2002:map", "tag:yaml.org,2002:seq", "tag:yaml.org,2002:str"
_SCALAR_KEYS = frozenset({_STR, *(f"tag:yaml.org,2002:{t}" for t in ("int", "float", "bool", "null"))})


class _NotPlain(Exception):
    """The document needs PyYAML's own constructor: aliases, merge keys, unhashable keys."""


class DuplicateKey(yaml.constructor.ConstructorError):
    """A key given twice in one mapping. PyYAML keeps the last silently: a second `nodes:` appended
    to an inventory dropped every node of the first, and the backup went on without them."""

    def __init__(self, key: Any, node: yaml.Node, first_line: int) -> None:
        super().__init__(problem=f"duplicate key {key!r} (first at line {first_line}): only the last would count",
                         problem_mark=node.start_mark)
        self.hint = f"merge the two {key!r} entries into one, or remove one"


def _construct_plain(loader: yaml.BaseLoader, node: yaml.Node, seen: set[int]) -> Any:
    """The maps, lists and strings of an inventory without PyYAML's generic machinery (5 ms, not 25,
    for 1000 nodes); other scalars still go to PyYAML, and anything else to PyYAML altogether."""
    tag = node.tag
    if tag == _STR:
        return node.value
    if tag in (_MAP, _SEQ):
        if id(node) in seen:  # an alias: PyYAML shares one object (and handles recursive ones)
            raise _NotPlain
        seen.add(id(node))
        if tag == _SEQ:
            return [_construct_plain(loader, item, seen) for item in node.value]
        out, lines = {}, {}
        for key, value in node.value:
            if key.tag not in _SCALAR_KEYS:
                raise _NotPlain  # merge keys (<<), collections as keys, explicit tags
            name = _construct_plain(loader, key, seen)
            if name in out:
                raise DuplicateKey(name, key, lines[name])
            lines[name] = key.start_mark.line + 1
            out[name] = _construct_plain(loader, value, seen)
        return out
    if isinstance(node, yaml.ScalarNode):
        return loader.construct_object(node)
    raise _NotPlain


# The patterns of the settings' names and addresses, in words: a regular expression is no way to
# tell an operator what a name may be. A pattern not listed here is shown as pydantic says it.
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$"  # nodes, clusters, volumes: safe in paths, tags and keys
NAME_IN_WORDS = "a valid name: 1-63 letters, digits, '.', '_' or '-', beginning with a letter or digit"
# No user or password before the host: botocore and the other SDKs repeat the URL in their errors,
# and credentials come from each SDK's own chain.
# No @ anywhere: a user:secret@ before the host, and a secret holding / (which urlsplit then
# reads as the start of the path) alike; no endpoint snapctl talks to has one in its path.
URL_PATTERN = r"^https?://[^@]*$"
_FORMS = {
    NAME_PATTERN: NAME_IN_WORDS,
    URL_PATTERN: "a URL: it must begin with http:// or https://, with no user:password@ (no @ at all) in it",
}
# What was given is not repeated for these: a URL may carry a user and password (user:secret@host).
_NOT_REPEATED = {URL_PATTERN}


def in_words(pattern: str, words: str, *, repeated: bool = True) -> str:
    """``pattern``, for ``Field(pattern=...)``, with how an error names what it wants ("an AWS
    region, such as eu-west-1"): a plugin's settings say their own forms where they define them.
    ``repeated=False`` for values that may carry a credential: an error then leaves them out."""
    _FORMS[pattern] = words
    if not repeated:
        _NOT_REPEATED.add(pattern)
    return pattern


def describe(exc: ValidationError, root: yaml.Node | None, source: str, model: type[BaseModel]) -> str:
    """``exc`` as one line, ``source:line: field: what is wrong``; ``model``: the one validated at
    the top level (the inventory, the agent's config)."""
    err = first_error(exc)
    line = line_of(root, tuple(err["loc"]))
    where = f"{source}:{line}" if line else source
    return f"{where}: {explain(err, model)}"


def explain(err: dict[str, Any], model: type[BaseModel]) -> str:
    """One pydantic error of ``model`` as the rest of a message: the field and what is wrong."""
    loc = tuple(err["loc"])
    field = dotted(loc)
    if err["type"] == "extra_forbidden":
        inner = model_at(loc[:-1], model)
        valid = ", ".join(inner.model_fields) if inner else ""
        return f"unknown key {field!r}" + (f" (valid keys: {valid})" if valid else "")
    if err["type"] == "missing":
        return f"missing required key {field!r}"
    pattern = str(err.get("ctx", {}).get("pattern")) if err["type"] == "string_pattern_mismatch" else None
    form = _FORMS.get(pattern) if pattern else None
    if form is not None and pattern in _NOT_REPEATED:
        return f"{field}: not {form}"
    if form is not None:
        shown = repr(err.get("input"))
        return f"{field}: {shown if len(shown) <= 70 else shown[:67] + '...'} is not {form}"
    if err["type"] in _BLOCK_TYPES:
        # pydantic's "a valid dictionary or instance of AgentAuth" names a class the operator never wrote.
        given = err.get("input")
        if given is None:
            return f"{field}: empty, where a block of keys belongs"
        shown = repr(given)
        return f"{field}: expected a block of keys, not {shown if len(shown) <= 40 else shown[:37] + '...'}"
    msg = err["msg"]
    msg = msg.removeprefix("Value error, ")
    return f"{field}: {msg[:1].lower() + msg[1:]}"


# The errors of a value given where a model (a block of keys) belongs.
_BLOCK_TYPES = frozenset({"model_type", "model_attributes_type", "dataclass_type", "dict_type"})


def not_a_boolean(value: Any) -> str:
    """The error for ``value`` given where true or false belongs."""
    shown = repr(value)
    return f"{NOT_A_BOOLEAN}, not {shown if len(shown) <= 40 else shown[:37] + '...'}"


def _only_a_number(value: Any) -> Any:
    if isinstance(value, bool):
        raise ValueError(NOT_A_NUMBER)  # noqa: TRY004 - pydantic reports a ValueError as the field's error
    return value


def _only_a_boolean(value: Any) -> Any:
    if not isinstance(value, bool):
        raise ValueError(not_a_boolean(value))  # noqa: TRY004 - as above
    return value


def _given(value: Any) -> Any:
    if isinstance(value, str) and not value.strip():
        # A template's unset variable (`store: "${STORE}"`) left the key to its default: snapshots
        # went to another store, the agent's hold record to another directory, without a word.
        raise RefusedValue("empty: give a value, or leave the key out for its default",
                           hint="an empty value is often a template's unset variable: set it, or remove the key")
    return value


# A setting that, when given, must say something: an empty string is refused, not taken for unset.
Given = Annotated[str, AfterValidator(_given)]

# pydantic's lax mode reads `keep_last: yes` as 1, which would keep one backup where the operator
# meant something else entirely, and `restore_target: 1` or `force_release: "no"` as booleans.
Count = Annotated[int, BeforeValidator(_only_a_number)]
Flag = Annotated[bool, BeforeValidator(_only_a_boolean)]


def mistyped_scalar(model: type[BaseModel], data: Any) -> tuple[tuple[str | int, ...], str] | None:
    """Where ``data`` has a YAML boolean for a field of ``model`` that takes a number and no boolean,
    or anything but a boolean for a field that takes only a boolean, and the error to show: what
    pydantic's lax mode would have converted. For the plugins' models (a provider's settings, an
    engine's), which the core cannot declare with ``Count`` and ``Flag``."""
    if not isinstance(data, dict):
        return None
    for name, field in model.model_fields.items():
        key = field.alias or name
        if key in data:
            found = _mistyped_in(field.annotation, data[key])
            if found is not None:
                return (key, *found[0]), found[1]
    return None


def _mistyped_in(annotation: Any, value: Any) -> tuple[tuple[str | int, ...], str] | None:
    kinds = _kinds(annotation)
    if Any in kinds:
        return None
    if isinstance(value, bool):
        numbers = [k for k in kinds if isinstance(k, type) and issubclass(k, (int, float)) and k is not bool]
        return ((), NOT_A_NUMBER) if numbers and bool not in kinds else None
    if value is not None and bool in kinds and all(k is bool or k is type(None) for k in kinds):
        return (), not_a_boolean(value)
    for kind in kinds:
        if isinstance(kind, type) and issubclass(kind, BaseModel):
            found = mistyped_scalar(kind, value)
            if found is not None:
                return found
        elif get_origin(kind) is list and isinstance(value, list):
            for index, item in enumerate(value):
                found = _mistyped_in(get_args(kind)[0], item)
                if found is not None:
                    return (index, *found[0]), found[1]
    return None


def _kinds(annotation: Any) -> list[Any]:
    """What ``annotation`` admits: unions flattened, ``Annotated`` unwrapped, literals as their types."""
    origin = get_origin(annotation)
    if origin is Annotated:
        return _kinds(get_args(annotation)[0])
    if origin is Union or origin is UnionType:
        return [kind for arg in get_args(annotation) for kind in _kinds(arg)]
    if origin is Literal:
        return [type(value) for value in get_args(annotation)]
    return [annotation]


def describe_not_utf8(data: bytes, exc: UnicodeDecodeError, source: str) -> str:
    """One line for a YAML file that is not UTF-8 text, naming the line and the byte. YAML files are
    decoded as UTF-8 whatever the locale says: cron's is often C, which made a comment with an
    accent a UnicodeDecodeError traceback."""
    line = data.count(b"\n", 0, exc.start) + 1
    return f"{source}:{line}: not UTF-8 text (byte {data[exc.start]:#04x})"


def describe_yaml_error(exc: yaml.YAMLError, text: str, source: str) -> str:
    """One line: PyYAML's own messages span several lines and name '<unicode string>'."""
    if isinstance(exc, yaml.reader.ReaderError):
        line = text[: exc.position].count("\n") + 1
        return f"{source}:{line}: invalid YAML: control character #x{exc.character:02x} is not allowed; remove it"
    mark = getattr(exc, "problem_mark", None)
    where = f"{source}:{mark.line + 1}" if mark else source
    if isinstance(exc, NumberTooLong):  # valid YAML: a value no setting takes
        return f"{where}: {exc}"
    problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    return f"{where}: invalid YAML: {problem}"


def first_error(exc: ValidationError) -> dict[str, Any]:
    """The error to show: an unknown key first, since a typo'd key also makes its intended key
    "missing", and the typo is the thing to fix."""
    errors = exc.errors()
    return next((e for e in errors if e["type"] == "extra_forbidden"), errors[0])


FINITE_HINT = "give a number such as 10: YAML's .nan and .inf are none"


def hint_of(err: dict[str, Any], model: type[BaseModel] | None = None) -> str | None:
    """The hint of a value a validator refused with one (``RefusedValue``), or of a NaN or an
    infinity given for a number (a model with ``allow_inf_nan=False``), else None; for a block
    of ``model`` that is empty or no block, its keys."""
    if err["type"] == "finite_number":
        return FINITE_HINT
    if err["type"] in _BLOCK_TYPES and model is not None:
        loc = tuple(err["loc"])
        inner = model_at(loc, model)
        key = next((part for part in reversed(loc) if isinstance(part, str)), None)
        if inner is not None and key is not None:
            keys = ", ".join(f.alias or name for name, f in inner.model_fields.items())
            return f"give {dotted(loc)} its keys ({keys}), or remove `{key}:`"
    return getattr((err.get("ctx") or {}).get("error"), "hint", None)


def dotted(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"


def line_of(node: yaml.Node | None, loc: tuple[Any, ...]) -> int | None:
    """The 1-based line of the deepest YAML node that ``loc`` reaches."""
    line = node.start_mark.line + 1 if node is not None else None
    for part in loc:
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                if key.value == part:
                    node = value if not isinstance(value, yaml.ScalarNode) or value.value else key
                    line = (key if isinstance(part, str) else value).start_mark.line + 1
                    break
            else:
                return line
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
            node = node.value[part]
            line = node.start_mark.line + 1
        else:
            return line
    return line


def model_at(loc: tuple[Any, ...], root_model: type[BaseModel]) -> type[BaseModel] | None:
    model: type[BaseModel] | None = root_model
    for part in loc:
        if isinstance(part, int) or model is None:
            continue
        field = model.model_fields.get(part)
        if field is None:
            return None
        annotation = field.annotation
        inner = getattr(annotation, "__args__", None)
        candidates = inner if inner else (annotation,)
        model = next((c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)), None)
    return model
