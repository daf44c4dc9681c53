"""Command-line options derived from the config dataclasses: a field's default, type and docstring, written once.

`config_options(Cls, "field", "nested.field", Opt("field", "--other-name"), into="config")` is a decorator for a
typer command. It adds one option per named field to the command's signature: the name is `--field-name` (the last
part of the path, `_` as `-`) unless given, the default is the dataclass's, the help text the field's docstring (the
string literal under the field in the class body), the type the field's annotation: `Literal[...]` gives a typed
choice that `--help` lists, `bool` a plain `--x/--no-x` flag, `tuple[T, ...]` a comma-separated list. The command
receives `into=` a `Cls` instance with those fields set (`into=None`: each value as its own keyword argument).

`recipe_option()` adds `--recipe NAME|FILE`: a JSON object of this command's option names and values (a NAME is
`specllm/recipes/NAME.json`), used as the options' defaults, so options given explicitly still win.
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import inspect
import json
import os
import sys
import typing
from pathlib import Path
from typing import Annotated, Any, get_args, get_origin

import typer
from typer.core import TyperCommand, TyperGroup

from .config import RECIPES, field_range, range_text, recipe_file

BOOL_WORDS = frozenset({"true", "false", "yes", "no", "on", "off", "1", "0"})


# ---------------------------------------------------------------- field docstrings


@functools.cache
def field_docs(cls: type) -> dict[str, str]:
    """{field: docstring} from the string literals that follow fields in `cls`'s body, whitespace collapsed."""
    module = sys.modules[cls.__module__]
    tree = ast.parse(Path(inspect.getfile(module)).read_text(encoding="utf-8"))
    body = next(
        (n.body for n in ast.walk(tree) if isinstance(n, ast.ClassDef) and n.name == cls.__qualname__),
        [],
    )
    docs = {}
    for node, after in zip(body, body[1:]):
        if (
            isinstance(node, ast.AnnAssign)
            and isinstance(node.target, ast.Name)
            and isinstance(after, ast.Expr)
            and isinstance(after.value, ast.Constant)
            and isinstance(after.value.value, str)
        ):
            docs[node.target.id] = " ".join(after.value.value.split())
    return docs


def resolve(cls: type, path: str) -> tuple[type, str, Any, Any]:
    """(owning dataclass, field name, annotation, default) of a dotted field path of `cls`."""
    *parents, name = path.split(".")
    owner = cls
    for part in parents:
        owner = typing.get_type_hints(owner)[part]
    fields = {f.name: f for f in dataclasses.fields(owner)}
    if name not in fields:
        raise AttributeError(f"{owner.__name__} has no field {name!r}")
    f = fields[name]
    if f.default is not dataclasses.MISSING:
        default = f.default
    elif f.default_factory is not dataclasses.MISSING:
        default = f.default_factory()
    else:
        default = ...  # required
    return owner, name, typing.get_type_hints(owner)[name], default


# ---------------------------------------------------------------- options from fields


@dataclasses.dataclass(frozen=True)
class Opt:
    """One option from a field: `path` in the command's config; `names` (default `--<last part>`); overrides."""

    path: str
    names: tuple[str, ...] = ()
    required: bool = False
    hidden: bool = False
    help: str | None = None  # this command's own --help text, where the field's docstring is another's

    def __init__(self, path: str, *names: str, required: bool = False, hidden: bool = False, help: str | None = None):
        object.__setattr__(self, "path", path)
        object.__setattr__(self, "names", names)
        object.__setattr__(self, "required", required)
        object.__setattr__(self, "hidden", hidden)
        object.__setattr__(self, "help", help)

    @property
    def param(self) -> str:
        """The Python name of the option (and its key in a recipe)."""
        first = self.names[0] if self.names else self.path.rsplit(".", 1)[-1]
        return first.lstrip("-").replace("-", "_")


def _split_list(item_type: type, option: str, default: tuple, bounds: tuple = (None, None)):
    def convert(value: str | None):
        if value is None:
            return default
        items = [v.strip() for v in value.split(",") if v.strip()]
        if not items:
            raise typer.BadParameter(f"{option} must be a comma-separated list")
        try:
            values = tuple(item_type(v) for v in items)
        except ValueError:
            kind = "integers" if item_type is int else "values"
            raise typer.BadParameter(f"{option} must be comma-separated {kind}") from None
        low, high = bounds
        for v in values:
            if (low is not None and v < low) or (high is not None and v > high):
                raise typer.BadParameter(f"{option}: each value must be {range_text(low, high)} (got {v})")
        return values

    return convert


def _parameter(cls: type, opt: Opt) -> tuple[inspect.Parameter, Any]:
    """The typer parameter of one field, and a function turning its parsed value into the field's value."""
    owner, name, annotation, default = resolve(cls, opt.path)
    help_text = opt.help or field_docs(owner).get(name)
    if not help_text:
        raise TypeError(f"{owner.__name__}.{name} has no docstring: it is the option's --help text")
    names = opt.names or ("--" + name.replace("_", "-"),)
    if annotation is bool and "/" not in names[0]:  # a plain flag and its negation: --x/--no-x
        names = (f"{names[0]}/--no-{names[0][2:]}", *names[1:])
    convert = None
    low, high = field_range(owner, name)  # the declared range: a value outside it is a usage error (exit 2)
    limits = {} if get_origin(annotation) is tuple or (low is None and high is None) else {"min": low, "max": high}
    if get_origin(annotation) is tuple:  # tuple[T, ...]: a comma-separated list
        item_type = get_args(annotation)[0]
        convert = _split_list(item_type, names[0], default, (low, high))
        annotation = str | None if not default else str
        default = ",".join(map(str, default)) if default else None
    if opt.required:
        default = ...
    metavar = None
    if get_origin(resolve(cls, opt.path)[2]) is tuple:
        metavar = "N,N,..." if get_args(resolve(cls, opt.path)[2])[0] is int else "A,B,..."
    info = typer.Option(*names, help=help_text, hidden=opt.hidden, show_default=default is not None, metavar=metavar,
                        **limits)  # fmt: skip
    kind = inspect.Parameter.KEYWORD_ONLY
    param = inspect.Parameter(opt.param, kind, default=inspect.Parameter.empty if default is ... else default,
                              annotation=Annotated[annotation, info])  # fmt: skip
    return param, convert


def set_fields(config: Any, values: dict[str, Any]) -> Any:
    """`config` with dotted field paths set to values."""
    nested: dict[str, Any] = {}
    for path, value in values.items():
        node = nested
        *parents, name = path.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[name] = value

    def apply(obj, changes):
        return dataclasses.replace(
            obj, **{k: apply(getattr(obj, k), v) if isinstance(v, dict) else v for k, v in changes.items()}
        )

    return apply(config, nested)


def _signature_of(fn) -> inspect.Signature:
    sig = getattr(fn, "__signature__", None)
    return sig if sig is not None else inspect.signature(fn, eval_str=True)


def _with_signature(wrapper, fn, params: list[inspect.Parameter]):
    functools.update_wrapper(wrapper, fn)
    del wrapper.__wrapped__  # typer must read the signature below, not the wrapped function's
    wrapper.__signature__ = inspect.Signature(params)
    wrapper.__annotations__ = {}
    return wrapper


def config_options(cls: type, *fields: str | Opt, into: str | None = "config"):
    """Add an option per field of `cls` to a command; the command receives `into=` a `cls` built from them."""
    opts = [f if isinstance(f, Opt) else Opt(f) for f in fields]
    built = [(opt, *_parameter(cls, opt)) for opt in opts]

    def decorate(fn):
        replaced = {into} if into else {opt.param for opt in opts}  # the parameters these options fill
        own = [p for name, p in _signature_of(fn).parameters.items() if name not in replaced]
        positional = [p for p in own if p.kind is not inspect.Parameter.KEYWORD_ONLY]
        keyword = [p for p in own if p.kind is inspect.Parameter.KEYWORD_ONLY]

        def wrapper(*args, **kwargs):
            values = {}
            for opt, param, convert in built:
                value = kwargs.pop(param.name)
                values[opt.path] = convert(value) if convert else value
            if into is None:
                kwargs.update({opt.param: values[opt.path] for opt in opts})
            else:
                required = _required_fields(cls)
                base = cls(**{path: v for path, v in values.items() if path in required})
                kwargs[into] = set_fields(base, {path: v for path, v in values.items() if path not in required})
            return fn(*args, **kwargs)

        keyword_only = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for _, p, _ in built]
        return _with_signature(wrapper, fn, [*positional, *keyword, *keyword_only])

    return decorate


def _required_fields(cls: type) -> set[str]:
    """Top-level fields of `cls` without a default: its constructor needs them."""
    missing = dataclasses.MISSING
    return {f.name for f in dataclasses.fields(cls) if f.default is missing and f.default_factory is missing}


# ---------------------------------------------------------------- recipes


def read_recipe(value: str, known: set[str]) -> dict[str, Any]:
    """The option values of recipe `value` (a NAME under specllm/recipes/ or a JSON file), keyed by option name."""
    path = recipe_file(value)
    if not path.is_file():
        names = ", ".join(sorted(p.stem for p in RECIPES.glob("*.json")))
        raise typer.BadParameter(f"{value}: no such recipe file or name (shipped: {names})")
    try:
        recipe = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise typer.BadParameter(f"{path}: not a readable JSON recipe ({exc})") from None
    if not isinstance(recipe, dict):
        raise typer.BadParameter(f"{path}: a recipe is a JSON object of option names and values")
    values = {str(k).lstrip("-").replace("-", "_"): v for k, v in recipe.items()}
    unknown = sorted(set(values) - known)
    if unknown:
        raise typer.BadParameter(f"{path}: unknown option(s) {', '.join(unknown)}")
    return values


def _apply_recipe(ctx: typer.Context, value: str | None) -> str | None:
    if value and not ctx.resilient_parsing:
        known = {p.name for p in ctx.command.params if p.name != "recipe"}
        ctx.default_map = {**(ctx.default_map or {}), **read_recipe(value, known)}
    return value


def recipe_option(fn):
    """Add `--recipe NAME|FILE` (the values of a recipe file become the defaults of this command's options)."""
    param = inspect.Parameter(
        "recipe",
        inspect.Parameter.KEYWORD_ONLY,
        default=None,
        annotation=Annotated[
            str | None,
            typer.Option(
                help="Defaults from a recipe: a NAME in specllm/recipes/ (e.g. shipped-stage1) or a JSON file of "
                "option names and values; options given explicitly override it.",
                callback=_apply_recipe,
                is_eager=True,
            ),
        ],
    )

    def wrapper(*args, recipe=None, **kwargs):
        return fn(*args, **kwargs)

    return _with_signature(wrapper, fn, [*_signature_of(fn).parameters.values(), param])


# ---------------------------------------------------------------- command classes


# Options and arguments whose value is a file or directory: `PATH` in --help (other text: `TEXT`).
PATH_PARAMS = frozenset({
    "out", "output", "model", "llm", "catalog", "from_file", "data", "init", "apogee", "galah", "gaia_eso",
    "deepspeed", "recipe", "reference", "base_model", "shards", "predictions", "spectra", "inputs",
})  # fmt: skip


def _plain_flags(params: list) -> list:
    """Readable value names in --help: flags take none (no `<bool>`), numbers are `N` (integers) or `X`, files
    `PATH`, lists of files `FILE...`, other text `TEXT`; choices list their values."""
    for param in params:
        if param.metavar is not None:
            continue
        if getattr(param, "is_flag", False):
            param.metavar = ""
            continue
        descriptor = getattr(param, "type_descriptor", None)
        kinds = set(_plain_types(getattr(descriptor, "annotation", None)))
        many = param.nargs == -1 or getattr(param, "multiple", False)
        if getattr(param, "param_type_name", "") == "argument":  # its name column is its value: no `<str>` type
            param.display_type_rich = lambda ctx: None
            param.metavar = "FILE" if many and param.name in PATH_PARAMS else param.name.upper()
            continue  # usage: [FILE]... (typer adds the dots)
        if many:
            param.metavar = "FILE..." if param.name in PATH_PARAMS else "TEXT..."
        elif kinds == {int}:
            param.metavar = "N"
        elif kinds == {float}:
            param.metavar = "X"
        elif kinds == {str}:
            param.metavar = "PATH" if param.name in PATH_PARAMS else "TEXT"
    return params


def _plain_types(annotation) -> list:
    """The types of an annotation less None (`int | None` -> [int]); a Literal or another kind -> [itself]."""
    if annotation is None:
        return []
    args = [a for a in get_args(annotation) if a is not type(None)]
    if get_origin(annotation) in (typing.Union, type(int | None)):
        return [t for a in args for t in _plain_types(a)]
    return [annotation]


class Command(TyperCommand):
    """A typer command whose flags show no value type, and that refuses `--flag true` (a flag takes no value)."""

    def get_params(self, ctx):
        return _plain_flags(super().get_params(ctx))

    def parse_args(self, ctx, args: list[str]) -> list[str]:
        flags = {
            name: param
            for param in self.params
            if getattr(param, "is_flag", False)
            for name in (*param.opts, *param.secondary_opts)
        }
        for i, arg in enumerate(args[:-1]):
            if arg == "--":
                break
            word = args[i + 1]
            if arg in flags and word.lower() in BOOL_WORDS and not os.path.exists(word):
                param = flags[arg]
                forms = " or ".join((*param.opts, *param.secondary_opts)[:2])
                raise typer.BadParameter(f"{arg} is a flag and takes no value (got {word!r}): write {forms}",
                                         ctx=ctx, param=param)  # fmt: skip
        return super().parse_args(ctx, args)


class Group(TyperGroup):
    """The `specllm` group: plain flags in --help, like its commands."""

    def get_params(self, ctx):
        return _plain_flags(super().get_params(ctx))
