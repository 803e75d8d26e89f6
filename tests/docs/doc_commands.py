"""The shell commands of README.md and docs/*.md, and what can be checked without running them.

`extract(path)` finds two kinds of command in a Markdown file:

- runnable: every line of a fenced ```bash / sh / shell / console block (`\\` continuations
  joined, `# comments` and `$ ` prompts stripped);
- synopsis: a `batchlab ...` (or `python` / `ray` / `bash ...`) inline code span, a `batchlab` or `python` line of an unlabeled
  fence, the first cell of docs/cli.md's command table (`run GRID.yaml [--dry-run] ...`);
  also `batchlab ...` in the comments of examples/ grids and in examples/*.sh.

`problems(cmd)` checks a command against the code without running it: every `batchlab`
subcommand and `--flag` exists (argparse's own parser, `batchlab.cli.build_parser`), values
of options and positionals with choices are allowed, a runnable `batchlab` line parses in
full, every repository path it names exists, and a `python FILE.py --flag` / `python -m
pkg.mod --flag` names a flag its source defines.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import re
import shlex
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SHELL_LANGS = {"bash", "sh", "shell", "console", "shell-session"}
# Top-level folders of the checkout: a command token starting with one names a repo file.
REPO_DIRS = ("examples", "deploy", "scheduler", "benchmarks", "app", "tests", "docs")
REPO_DIRS += ("warehouse", "workers", "batchlab")
OUTPUT_OPTIONS = {"--out", "--output", "--json", "-o"}  # their values are written, not read
SEPARATORS = {"&&", "||", "|", ";"}
# Inline code spans that are commands (static checks only).
SPAN_COMMANDS = ("batchlab ", "python ", "ray ", "bash ")


@dataclass(frozen=True)
class DocCommand:
    source: str  # "docs/cli.md:42"
    text: str
    runnable: bool  # a line of a shell block (run when the skip table allows)

    def __str__(self) -> str:
        return f"{self.source}: {self.text}"


def strip_comment(line: str) -> str:
    """`line` without a trailing shell comment (a `#` after whitespace, outside quotes)."""
    quote = None
    for i, c in enumerate(line):
        if quote:
            quote = None if c == quote else quote
        elif c in "'\"":
            quote = c
        elif c == "#" and (i == 0 or line[i - 1].isspace()):
            return line[:i].rstrip()
    return line.rstrip()


def _spans(text: str) -> list[str]:
    """Inline code spans of Markdown text (outside fences), whitespace normalized."""
    return [" ".join(s.split()) for s in re.findall(r"`([^`]+)`", text)]


def extract(path: Path) -> list[DocCommand]:
    rel = str(path.relative_to(REPO))
    lines = path.read_text().splitlines()
    out: list[DocCommand] = []
    fence: str | None = None  # the language of the open fence ("" unlabeled)
    pending, start = "", 0
    prose: list[tuple[int, str]] = []
    in_table = False
    for n, raw in enumerate(lines, 1):
        stripped = raw.strip()
        if stripped.startswith("```"):
            fence = None if fence is not None else stripped[3:].strip().lower()
            continue
        if fence is None:
            prose.append((n, raw))
            if rel == "docs/cli.md":  # the command table: `run GRID.yaml [...]` cells
                if stripped.startswith("| command |"):
                    in_table = True
                elif in_table and not stripped.startswith("|"):
                    in_table = False
                elif in_table and stripped.startswith("| `"):
                    cell = stripped.replace("\\|", "\0").split("|")[1].replace("\0", "|")
                    for span in _spans(cell):
                        out.append(DocCommand(f"{rel}:{n}", f"batchlab {span}", False))
            continue
        if fence in SHELL_LANGS:
            line = stripped.removeprefix("$ ")
            if not pending:
                start = n
            if line.endswith("\\"):
                pending += line[:-1].strip() + " "
                continue
            text = strip_comment(pending + line).strip()
            pending = ""
            if text:
                out.append(DocCommand(f"{rel}:{start}", text, True))
        elif stripped.startswith(("batchlab ", "python ")):
            out.append(DocCommand(f"{rel}:{n}", stripped, False))
        elif stripped.startswith("[") and out and out[-1].source == f"{rel}:{n - 1}":
            # a synopsis continued on the next line: `batchlab advise [...]\n    [...]`
            out[-1] = DocCommand(f"{rel}:{n}", f"{out[-1].text} {stripped}", False)
    # Inline spans, paragraph by paragraph (a span may wrap a line).
    para: list[tuple[int, str]] = []
    for n, raw in [*prose, (0, "")]:
        if raw.strip():
            para.append((n, raw))
            continue
        for span in _spans(" ".join(r for _, r in para)):
            if span.startswith(SPAN_COMMANDS):
                word = span.split()[1]
                first = next((k for k, r in para if word in r), para[0][0])
                out.append(DocCommand(f"{rel}:{first}", span, False))
        para = []
    return out


def extract_examples() -> list[DocCommand]:
    """`batchlab ...` in the comments of examples/ grids and in examples/*.sh."""
    out: list[DocCommand] = []
    for path in sorted((REPO / "examples").rglob("*.yaml")) + sorted(
        (REPO / "examples").glob("*.sh")
    ):
        if (REPO / "examples" / "results") in path.parents:
            continue
        rel = str(path.relative_to(REPO))
        pending, start = "", 0
        for n, raw in enumerate(path.read_text().splitlines(), 1):
            line = raw.strip()
            if path.suffix == ".yaml":
                if not line.startswith("#") or "batchlab " not in line:
                    continue
                text = line[line.index("batchlab ") :]
                text = re.split(r"\s{2,}|`", text)[0]  # the command, not the prose after it
                out.append(DocCommand(f"{rel}:{n}", text.strip(), False))
                continue
            if not pending:
                start = n
            if line.endswith("\\"):
                pending += line[:-1].strip() + " "
                continue
            text, pending = strip_comment(pending + line).strip(), ""
            if text.startswith("batchlab "):
                out.append(DocCommand(f"{rel}:{start}", text, False))
    return out


def doc_files() -> list[Path]:
    """README.md, docs/*.md and the committed demo warehouse's README."""
    docs = sorted((REPO / "docs").glob("*.md"))
    return [REPO / "README.md", *docs, REPO / "examples" / "results" / "README.md"]


def all_commands() -> list[DocCommand]:
    return [c for p in doc_files() for c in extract(p)] + extract_examples()


def tokens(text: str, synopsis: bool) -> list[str]:
    if synopsis:  # `[--flag X | --other Y]` optional parts and alternatives: flags count
        text = text.replace("[", " ").replace("]", " ").replace(" | ", " ")
    try:
        return shlex.split(text)
    except ValueError:
        return text.split()


def _segments(toks: list[str]) -> list[list[str]]:
    segs: list[list[str]] = [[]]
    for t in toks:
        if t in SEPARATORS:
            segs.append([])
        else:
            segs[-1].append(t)
    return [s for s in segs if s]


def _placeholder(tok: str) -> bool:
    return tok in ("...", "-") or tok.startswith(("<", "$", "...")) or tok.isupper()


def _subparsers() -> dict[str, argparse.ArgumentParser]:
    from batchlab.cli import build_parser

    ap = build_parser()
    action = next(a for a in ap._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def batchlab_problems(args: list[str], runnable: bool) -> list[str]:
    """Problems of `batchlab ARGS` against the CLI's parser."""
    from batchlab.cli import build_parser

    args = args[: next((i for i, a in enumerate(args) if a in ("<", ">", "2>")), len(args))]
    subs = _subparsers()
    if not args or args[0].startswith("-"):
        return [] if args and args[0] in ("-h", "--help") else ["no subcommand"]
    if _placeholder(args[0]):  # `batchlab <command> --help`
        known = {o for p in subs.values() for o in p._option_string_actions}
        return [f"unknown flag {a}" for a in args if a.startswith("--") and a not in known]
    sub = subs.get(args[0])
    if sub is None:
        return [f"unknown subcommand {args[0]!r} (the CLI has: {', '.join(sorted(subs))})"]
    problems = []
    options = sub._option_string_actions
    for i, a in enumerate(args[1:], 1):
        if not a.startswith("--"):
            continue
        flag = a.split("=", 1)[0]
        if flag not in options:
            problems.append(f"unknown flag {flag} of `batchlab {args[0]}`")
            continue
        choices = options[flag].choices
        value = a.split("=", 1)[1] if "=" in a else (args[i + 1] if i + 1 < len(args) else "")
        if choices and value and not _placeholder(value):
            bad = [v for v in value.split("|") if v not in choices]
            if bad:
                problems.append(f"{flag} {value}: {bad} not in {sorted(choices)}")
    positional = [a for a in sub._actions if not a.option_strings]
    if positional and positional[0].choices and len(args) > 1:
        value = args[1]
        if not _placeholder(value) and any(
            v not in positional[0].choices for v in value.split("|")
        ):
            problems.append(f"{value!r} is not one of {sorted(positional[0].choices)}")
    if runnable and not problems:
        err = io.StringIO()
        with contextlib.redirect_stderr(err), contextlib.suppress(SystemExit):
            build_parser().parse_args(args)
            return []
        problems.append(f"argparse refuses it: {err.getvalue().strip().splitlines()[-1]}")
    return problems


def _repo_path(tok: str) -> bool:
    tok = tok.removeprefix("./")
    return tok.split("/", 1)[0] in REPO_DIRS and "/" in tok and not any(c in tok for c in "*<>$")


def _python_problems(seg: list[str]) -> list[str]:
    """`python FILE.py --flag` / `python -m pkg.mod --flag`: the file exists, its flags too."""
    i = _program(seg, ("python", "python3")) or 0
    rest = seg[i + 1 :]
    if not rest:
        return []
    if rest[0] == "-m":
        mod = rest[1] if len(rest) > 1 else ""
        path = REPO / (mod.replace(".", "/") + ".py")
        if mod.split(".")[0] not in REPO_DIRS:
            return []  # pytest, streamlit ...: not ours
        if not path.exists():
            return [f"module {mod} does not exist ({path.relative_to(REPO)})"]
        flags = rest[2:]
    elif rest[0].startswith(("~", "/", "-")):
        return []  # a file on another machine (`python ~/submit.py` on the head node)
    else:
        path = REPO / rest[0]
        if not path.exists():
            return [f"{rest[0]} does not exist"]
        flags = rest[1:]
    source = path.read_text()
    return [
        f"{path.relative_to(REPO)} defines no option {f}"
        for f in (t.split("=", 1)[0] for t in flags)
        if f.startswith("--") and f'"{f}"' not in source
    ]


def _program(seg: list[str], names: tuple[str, ...]) -> int | None:
    """Where one of `names` is the program of the segment: its first word after VAR=value
    assignments, or the command after `--` (`ray job submit ... -- batchlab run ...`);
    never a mere argument (`kubectl get rayjob batchlab`)."""
    for i, tok in enumerate(seg):
        if tok in names and (i == 0 or seg[i - 1] == "--"):
            return i
        if tok in names and all(re.match(r"^[A-Za-z_]\w*=", t) for t in seg[:i]):
            return i
    return None


def problems(cmd: DocCommand) -> list[str]:
    """Everything about `cmd` that no longer matches the code (empty: fine)."""
    out: list[str] = []
    for seg in _segments(tokens(cmd.text, synopsis=not cmd.runnable)):
        i = _program(seg, ("batchlab",))
        if i is not None:
            out += batchlab_problems(seg[i + 1 :], cmd.runnable)
        if _program(seg, ("python", "python3")) is not None:
            out += _python_problems(seg)
        for i, tok in enumerate(seg):
            if i and seg[i - 1] in OUTPUT_OPTIONS:
                continue
            if _repo_path(tok) and not (REPO / tok.removeprefix("./")).exists():
                out.append(f"{tok} does not exist in the repository")
    return out
