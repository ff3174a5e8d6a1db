"""Configuration problems: each with file, line and key path, all gathered before anything connects."""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ValidationError

from agent.config.yamlpos import Located

KeyPath = tuple[str | int, ...]




@dataclass(frozen=True, slots=True)
class Problem:
    file: str
    line: int | None
    path: str
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        return f"{where}: {self.path}: {self.message}" if self.path else f"{where}: {self.message}"


class ConfigError(Exception):
    """The configuration cannot be used; `problems` lists every reason, in file order."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = sorted(problems, key=lambda p: (p.line or 0, p.path))
        super().__init__("\n".join(str(p) for p in self.problems))


def _dotted(path: KeyPath) -> str:
    return ".".join(str(p) for p in path)


class Collector:
    """Gathers problems for one file, locating each key path in the YAML."""

    def __init__(self, file: str, located: Located) -> None:
        self.file = file
        self.located = located
        self.problems: list[Problem] = []
        self.warnings: list[Problem] = []  # usable, but probably not what was meant

    def add(self, path: KeyPath, message: str) -> None:
        # A key that is missing altogether has no line: the file's first line, so FILE:LINE holds.
        line = self.located.line_of(path) or 1
        self.problems.append(Problem(self.file, line, _dotted(path), message))

    def warn(self, path: KeyPath, message: str) -> None:
        line = self.located.line_of(path) or 1
        self.warnings.append(Problem(self.file, line, _dotted(path), f"warning: {message}"))

    def validate(self, model: type[BaseModel], data: Any, path: KeyPath) -> Any:
        """Validate `data` at `path`; record every error and return None on failure."""
        try:
            return model.model_validate(data)
        except ValidationError as exc:
            for err in exc.errors():
                loc = tuple(p for p in err["loc"] if not str(p).startswith("function-"))
                self.add((*path, *loc), explain(err, model, loc))
            return None


def _model_at(model: type[BaseModel], loc: tuple[Any, ...]) -> type[BaseModel] | None:
    """The model owning the last key of `loc` (for did-you-mean suggestions)."""
    current: Any = model
    for part in loc[:-1]:
        if not (isinstance(current, type) and issubclass(current, BaseModel)):
            return None
        info = current.model_fields.get(str(part))
        current = info.annotation if info is not None else None
    return current if isinstance(current, type) and issubclass(current, BaseModel) else None


NOT_SHOWN = "(not shown)"  # in a validator's message: do not echo the value, it holds a secret


def explain(err: Any, model: type[BaseModel], loc: tuple[Any, ...]) -> str:
    if err["type"] == "extra_forbidden":
        owner = _model_at(model, loc)
        key = str(loc[-1]) if loc else ""
        known = list(owner.model_fields) if owner is not None else []
        return unknown_key_message(key, known)
    if err["type"] == "missing":
        return "required key is missing"
    message = str(err["msg"]).removeprefix("Value error, ")
    given = err.get("input")
    if NOT_SHOWN in message:
        return message  # the value holds a secret: it must not reach a terminal or a log
    if isinstance(given, (str, int, float, bool)) and err["type"] != "missing":
        message += f" (got {given!r})"
    return message


def unknown_key_message(key: str, known: list[str]) -> str:
    close = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return f"unknown key {key!r}{hint}"
