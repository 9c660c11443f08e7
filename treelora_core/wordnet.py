"""WordNet's data files (Debian `wordnet-base`) read as synsets: lexicographer class, lemmas,
definition and antonyms. The benchmark streams build their tasks from these."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

from .errors import DataError

WORDNET_DIR = Path("/usr/share/wordnet")  # Debian package wordnet-base
# Lexicographer files (WordNet's 45 supersenses) by number.
LEXNAMES = (
    "adj.all adj.pert adv.all noun.Tops noun.act noun.animal noun.artifact noun.attribute noun.body "
    "noun.cognition noun.communication noun.event noun.feeling noun.food noun.group noun.location "
    "noun.motive noun.object noun.person noun.phenomenon noun.plant noun.possession noun.process "
    "noun.quantity noun.relation noun.shape noun.state noun.substance noun.time verb.body verb.change "
    "verb.cognition verb.communication verb.competition verb.consumption verb.contact verb.creation "
    "verb.emotion verb.motion verb.perception verb.possession verb.social verb.stative verb.weather "
    "adj.ppl"
).split()
POS_FILES = {"noun": "data.noun", "verb": "data.verb", "adj": "data.adj", "adv": "data.adv"}


@dataclass(frozen=True)
class Synset:
    offset: str
    lexname: str  # e.g. "noun.animal"
    lemmas: tuple[str, ...]  # underscores turned into spaces, adjective markers like "(a)" dropped
    gloss: str  # the definition: the text before the first ";" (usage examples follow it)
    antonyms: tuple[str, ...]  # lemmas of the antonym pointers' targets (filled by `synsets`)


def _parse(line: str) -> tuple[Synset, list[tuple[str, int]]]:
    """One data-file line -> (synset without antonyms, antonym pointers as (offset, target lemma
    number; 0 = every lemma))."""
    head, gloss = line.split("|", 1)
    f = head.split()
    offset, lexname, n_words = f[0], LEXNAMES[int(f[1])], int(f[3], 16)
    lemmas = tuple(f[4 + 2 * i].split("(")[0].replace("_", " ") for i in range(n_words))
    k = 4 + 2 * n_words
    n_ptrs = int(f[k])
    antonyms = []
    for j in range(n_ptrs):
        symbol, target, _pos, src_dst = f[k + 1 + 4 * j : k + 5 + 4 * j]
        if symbol == "!":
            antonyms.append((target, int(src_dst[2:], 16)))
    definition = gloss.split(";")[0].strip()
    return Synset(offset, lexname, lemmas, definition, ()), antonyms


@functools.lru_cache(maxsize=8)
def synsets(pos: str, root: Path = WORDNET_DIR) -> tuple[Synset, ...]:
    """Every synset of one part of speech ("noun", "verb", "adj", "adv"), in file order."""
    if pos not in POS_FILES:
        raise DataError(f"pos must be one of {sorted(POS_FILES)}", param="pos")
    path = Path(root) / POS_FILES[pos]
    if not path.exists():
        raise DataError(f"{path} not found: install the Debian package wordnet-base")
    parsed = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        if not line.startswith(" ") and "|" in line:
            parsed.append(_parse(line))
    by_offset = {s.offset: s for s, _ in parsed}
    out = []
    for s, ants in parsed:
        names = []
        for target, lemma_no in ants:
            other = by_offset.get(target)
            if other is not None:
                names.append(other.lemmas[lemma_no - 1] if 0 < lemma_no <= len(other.lemmas) else other.lemmas[0])
        out.append(Synset(s.offset, s.lexname, s.lemmas, s.gloss, tuple(dict.fromkeys(names))))
    return tuple(out)


def glosses_by_class(pos: str, root: Path = WORDNET_DIR, min_chars: int = 11) -> dict[str, list[str]]:
    """Definitions grouped by supersense, keyed by the label word after "<pos>." (e.g. "animal")."""
    groups: dict[str, list[str]] = {}
    for s in synsets(pos, root):
        if len(s.gloss) >= min_chars:
            groups.setdefault(s.lexname.split(".", 1)[1], []).append(s.gloss)
    return groups
