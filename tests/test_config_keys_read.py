"""No config key is accepted and ignored (issue 20): every key of the defaults tree is read by meddet's code.

A key ``A.B.C`` counts as read when meddet's code (comments, docstrings and messages left out) accesses
``B.C`` or ``B["C"]``, or ``x.C`` where ``x`` is assigned from ``... .B`` somewhere (``clip =
cfg.SOLVER.CLIP_GRADIENTS``); a leaf name found in no other section may be accessed from any variable, and
a string constant equal to the leaf name counts for tables that map names to keys (``cfg.TILING[key]``).
"""

from __future__ import annotations

import io
import re
import tokenize
from collections import defaultdict
from pathlib import Path

from yacs.config import CfgNode

from meddet.config import get_cfg

ROOT = Path(__file__).resolve().parents[1]
SOURCES = sorted((ROOT / "meddet").rglob("*.py"))


def _leaves(node: CfgNode, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    out = []
    for k, v in node.items():
        out += _leaves(v, prefix + (k,)) if isinstance(v, CfgNode) else [prefix + (k,)]
    return out


def _code_and_strings(path: Path) -> tuple[str, set[str]]:
    """The file's code with comments and string literals blanked, and its string constants."""
    code, strings = [], set()
    tokens = tokenize.generate_tokens(io.StringIO(path.read_text(encoding="utf-8")).readline)
    for tok in tokens:
        if tok.type == tokenize.COMMENT:
            continue
        if tok.type == tokenize.STRING:
            strings.add(tok.string.strip("\"'"))
            code.append(" STR ")
        elif tok.type in (tokenize.NEWLINE, tokenize.NL):
            code.append("\n")
        else:
            code.append(" " + tok.string)
    text = "".join(code)
    return re.sub(r" ?\. ?", ".", text), strings  # "a . b" -> "a.b"


def test_every_default_key_is_read_somewhere():
    code, strings = "", set()
    for path in SOURCES:
        if path.name == "defaults.py" and path.parent.name == "config":
            continue
        c, s = _code_and_strings(path)
        code += c + "\n"
        strings |= s
    leaves = _leaves(get_cfg())
    sections_of_leaf: dict[str, set[tuple[str, ...]]] = defaultdict(set)
    for key in leaves:
        sections_of_leaf[key[-1]].add(key[:-1])
    # aliases: `name = something.SECTION` (a variable that holds a config section)
    aliases: dict[str, set[str]] = defaultdict(set)
    for name, section in re.findall(r"\b(\w+) = [\w.]*\.([A-Z][A-Z0-9_]*)\s*\n", code):
        aliases[section].add(name)
    unread = []
    for key in leaves:
        leaf, parent = key[-1], key[-2] if len(key) > 1 else None
        patterns = []
        if parent is None:
            patterns.append(rf"\.{leaf}\b")
        else:
            patterns += [rf"\b{parent}\.{leaf}\b", rf"\b{parent}\[ ?STR ?\]"]
            patterns += [rf"\b{alias}\.{leaf}\b" for alias in aliases[parent]]
            if len(sections_of_leaf[leaf]) == 1:
                patterns.append(rf"\.{leaf}\b")
        if leaf in strings and len(sections_of_leaf[leaf]) == 1:
            continue
        if not any(re.search(p, code) for p in patterns):
            unread.append(".".join(key))
    assert not unread, f"config keys nothing in meddet/ reads (accepted and ignored): {unread}"
