"""What a package declares it depends on, in each of the formats enot builds.

enot reads one project file, in this order: enot_config.json, erlang.mk (the Makefile),
rebar.config. We read the same one, so that what the server builds first is what enot
will ask for. The rebar reading is Erlang (rebar.config.script is code): it runs in the
sandbox (rebar_deps.escript) and hands us JSON, parsed here. The Makefile is parsed
here, line by line, in time linear in its size (like builder.makefile_variables): a
hostile Makefile costs no more than its bytes.
"""

from __future__ import annotations

import re
from typing import Any

from . import MAX_DIRECT, Declared

ENOT = "enot_config.json"
ERLANG_MK = "erlang.mk"
REBAR = "rebar.config"

# One logical line of a Makefile (continuations joined), anchored at its start: an
# assignment `[override|export] NAME op value`. The name's class and the operator's
# share no character, so there is nothing to backtrack over.
ASSIGNMENT = re.compile(rb"[ \t]*(?:(?:override|export)[ \t]+)?([A-Za-z0-9_.-]+)[ \t]*"
                        rb"(::=|:=|\?=|\+=|=)(.*)")
COMMIT = re.compile(r"[0-9a-f]{40}")
# erlang.mk's fetch methods we build (git), or ask the registry for (hex).
GIT_METHODS = ("git", "git-emu")


def project_kind(files: set[str]) -> str | None:
    """The file enot reads the project from, among the names present (enot's order)."""
    for kind in (ENOT, ERLANG_MK, REBAR):
        if kind in files:
            return kind
    if "rebar.config.script" in files:
        return REBAR
    return None


def enot_deps(config: dict[str, Any] | None) -> list[Declared]:
    """enot_config.json's `deps`: {"name", "url", "tag" | "branch"}; without a URL,
    enot asks the registry for `name` at `tag`."""
    deps = config.get("deps") if isinstance(config, dict) else None
    found: list[Declared] = []
    for dep in (deps if isinstance(deps, list) else [])[:MAX_DIRECT]:
        if not isinstance(dep, dict) or not isinstance(dep.get("name"), str):
            found.append(Declared("?", "unsupported", problem=f"not a dependency: {dep!r:.200}"))
            continue
        name = dep["name"]
        tag, branch = dep.get("tag"), dep.get("branch")
        tag = tag if isinstance(tag, str) and tag else None
        branch = branch if isinstance(branch, str) and branch else None
        url = dep.get("url")
        if isinstance(url, str) and url:
            if tag is None and branch is None:
                found.append(Declared(name, "git", url=url))
            elif tag is not None:
                found.append(Declared(name, "git", url=url, tag=tag))
            elif COMMIT.fullmatch(branch or ""):
                found.append(Declared(name, "git", url=url, ref=branch))
            else:
                found.append(Declared(name, "git", url=url, branch=branch))
        else:
            found.append(Declared(name, "registry", package=name, requirement=tag))
    return found


def rebar_deps(document: Any) -> list[Declared]:
    """The JSON rebar_deps.escript wrote: {"deps": [{"name", "source", ...}]}."""
    deps = document.get("deps") if isinstance(document, dict) else None
    if not isinstance(deps, list):
        raise ValueError("the rebar dependency reader wrote no deps list")
    found = []
    for dep in deps[:MAX_DIRECT]:
        if not isinstance(dep, dict):
            continue
        fields = {key: value for key, value in dep.items() if isinstance(value, str)}
        name, source = fields.get("name", "?"), fields.get("source")
        if source == "git" and "url" in fields:
            found.append(Declared(name, "git", url=fields["url"], tag=fields.get("tag"),
                                  branch=fields.get("branch"), ref=fields.get("ref"),
                                  revision=fields.get("revision")))
        elif source == "registry" and "package" in fields:
            found.append(Declared(name, "registry", package=fields["package"],
                                  requirement=fields.get("requirement")))
        else:
            found.append(Declared(name, "unsupported",
                                  problem=fields.get("problem", "not understood")))
    return found


def makefile_assignments(makefile: bytes) -> dict[str, str]:
    """The variables a Makefile assigns, as text (later assignments win, += appends).

    Continuation lines (a trailing backslash) are joined first. Conditionals are
    evaluated as make would in the build, where the environment sets nothing: `ifdef
    GUN_QUICER` and `ifeq ($(GUN_QUICER),1)` are false, so an optional dependency
    (`DEPS += quicer` there) is not one. `$(NAME)` expands to what the Makefile
    assigned so far; a condition with any other expansion (a function such as
    `$(shell ...)`) is taken as false. `define ... endef` bodies assign nothing.
    """
    variables: dict[str, str] = {}
    branches = _Branches()
    pending: list[bytes] = []
    in_define = False
    for raw in makefile.split(b"\n"):
        line = raw.rstrip(b"\r")
        if line.endswith(b"\\"):
            pending.append(line[:-1])
            continue
        logical = b" ".join([*pending, line]) if pending else line
        pending = []
        stripped = logical.strip(b" \t")
        if stripped.startswith(b"#"):
            continue
        word = _first_word(stripped)[0]
        if in_define:
            in_define = word != b"endef"
            continue
        if word in _CONDITIONALS or word in (b"else", b"endif"):
            branches.line(stripped, variables)
            continue
        if not branches.active:
            continue
        if word == b"define":
            in_define = True
            continue
        match = ASSIGNMENT.match(logical)
        if match is None:
            continue
        name = match.group(1).decode("ascii")
        value = match.group(3).split(b"#", 1)[0].strip(b" \t").decode(errors="replace")
        if match.group(2) == b"+=" and name in variables:
            variables[name] = f"{variables[name]} {value}".strip()
        elif match.group(2) != b"?=" or name not in variables:
            variables[name] = value
    return variables


_CONDITIONALS = (b"ifdef", b"ifndef", b"ifeq", b"ifneq")
# $(NAME) or ${NAME}: a plain variable reference, the only expansion we evaluate.
_REFERENCE = re.compile(r"\$[({]([A-Za-z0-9_.-]+)[)}]")


class _Branches:
    """The stack of make conditionals open at a line: whether lines there count."""

    def __init__(self) -> None:
        # Per open conditional: (counting around it, a branch was taken, this one is).
        self.stack: list[tuple[bool, bool, bool]] = []

    @property
    def active(self) -> bool:
        # The top one's `outer` already says whether every conditional below counts
        # (so a deep nesting costs nothing per line).
        return not self.stack or (self.stack[-1][0] and self.stack[-1][2])

    def line(self, text: bytes, variables: dict[str, str]) -> None:
        word, rest = _first_word(text)
        if word in _CONDITIONALS:
            holds = _condition(word, rest.decode(errors="replace"), variables)
            self.stack.append((self.active, holds, holds))
        elif word == b"else" and self.stack:
            outer, taken, _ = self.stack.pop()
            chained, argument = _first_word(rest)
            if chained in _CONDITIONALS:  # else ifeq (...): the chain goes on
                holds = not taken and _condition(chained, argument.decode(errors="replace"),
                                                 variables)
                self.stack.append((outer, taken or holds, holds))
            else:
                self.stack.append((outer, True, not taken))
        elif word == b"endif" and self.stack:
            self.stack.pop()


def _first_word(text: bytes) -> tuple[bytes, bytes]:
    """A stripped line's directive and the rest, split at spaces or tabs as make does."""
    parts = text.split(None, 1)
    return (parts[0] if parts else b"", parts[1].strip() if len(parts) > 1 else b"")


def _condition(word: bytes, argument: str, variables: dict[str, str]) -> bool:
    if word in (b"ifdef", b"ifndef"):
        defined = bool(variables.get(argument.strip(), ""))
        return defined if word == b"ifdef" else not defined
    sides = _comparison(argument)
    if sides is None:
        return False
    expanded = [_expand(side, variables) for side in sides]
    if any(side is None for side in expanded):
        return False
    equal = expanded[0] == expanded[1]
    return equal if word == b"ifeq" else not equal


def _comparison(argument: str) -> tuple[str, str] | None:
    """The two sides of `(a,b)`, `"a" "b"` or `'a' 'b'`."""
    if argument.startswith("(") and argument.endswith(")"):
        inner = argument[1:-1]
        # The comma between the sides is the first one outside a $(...) reference.
        depth = 0
        for i, char in enumerate(inner):
            if char in "({":
                depth += 1
            elif char in ")}":
                depth -= 1
            elif char == "," and depth == 0:
                return inner[:i].strip(), inner[i + 1:].strip()
        return None
    sides = []
    rest = argument
    for _ in range(2):  # "a" "b", 'a' 'b' (each side its own quote); found, not matched
        if not rest or rest[0] not in "\"'" or (end := rest.find(rest[0], 1)) < 0:
            return None
        sides.append(rest[1:end])
        rest = rest[end + 1:].lstrip(" \t")
    return (sides[0], sides[1]) if not rest else None


def _expand(text: str, variables: dict[str, str]) -> str | None:
    """`text` with its $(NAME) references replaced; None when it holds anything else."""
    expanded = _REFERENCE.sub(lambda m: variables.get(m.group(1), ""), text)
    return None if "$" in expanded else expanded.strip()


def erlang_mk_deps(makefile: bytes) -> list[Declared]:
    """erlang.mk's DEPS, each described by its dep_NAME line (`git URL REF`, `hex VSN
    [PACKAGE]`) and dep_NAME_commit, the way erlang.mk reads them."""
    variables = makefile_assignments(makefile)
    found: list[Declared] = []
    for name in variables.get("DEPS", "").split()[:MAX_DIRECT]:
        if "$" in name:
            found.append(Declared(name, "unsupported",
                                  problem="DEPS names a Make variable; it is not evaluated"))
            continue
        line = variables.get(f"dep_{name}")
        if line is None:
            found.append(Declared(name, "unsupported",
                                  problem=f"no dep_{name} line (erlang.mk's package index "
                                          "is not used here)"))
            continue
        words = line.split()
        commit = variables.get(f"dep_{name}_commit", "").strip() or None
        if "$" in line or (commit is not None and "$" in commit):
            found.append(Declared(name, "unsupported",
                                  problem=f"dep_{name} uses a Make variable; it is not evaluated"))
        elif words and words[0] in GIT_METHODS and len(words) >= 2:
            revision = commit or (words[2] if len(words) > 2 else "master")
            found.append(_git_revision(name, words[1], revision))
        elif words and words[0] == "hex" and len(words) >= 2:
            package = words[2] if len(words) > 2 else name
            found.append(Declared(name, "registry", package=package,
                                  requirement=commit or words[1]))
        elif words and "://" in words[0]:
            # erlang.mk's old form: dep_NAME = URL [REF], fetched with git.
            revision = commit or (words[1] if len(words) > 1 else "master")
            found.append(_git_revision(name, words[0], revision))
        else:
            method = words[0] if words else "(empty)"
            found.append(Declared(name, "unsupported",
                                  problem=f"dep_{name}: fetch method {method!r} is not built "
                                          "here (only git and hex)"))
    return found


def _git_revision(name: str, url: str, revision: str) -> Declared:
    if COMMIT.fullmatch(revision):
        return Declared(name, "git", url=url, ref=revision)
    return Declared(name, "git", url=url, revision=revision)
