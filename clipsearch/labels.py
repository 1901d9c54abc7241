"""Label sets and prompt templates: the words a zero-shot classifier is made of.

A label set is a named list of labels. Each label is turned into text prompts by filling
its name (and any synonyms) into templates such as ``"a photo of a {}."``; a label may
also bring whole prompts of its own. The classifier averages a label's prompts in
embedding space (``classifier.py``).

Where label sets come from (``LabelSet.load``):

* a bundled set by name: ``imagenet``, ``coco``, ``photos``, ``demo-colours``,
  ``demo-shapes`` (``data/labels/``);
* a text file: one label per line, ``#`` starts a comment;
* a YAML or TOML file with per-label options::

      name: pets                      # the set's name in stored tags (default: file stem)
      templates: [photo, "a snapshot of my {}."]   # optional default templates
      labels:
        animal:                       # a plain label
        dog: {parent: animal, synonyms: [puppy]}
        golden retriever: {parent: dog, threshold: 0.3}
        screenshot: {prompts: ["a screenshot of a phone or computer screen."]}

  ``synonyms`` are filled into the templates like the name; ``prompts`` are used as they
  are; ``threshold`` is this label's own probability threshold for tagging; ``parent``
  names a broader label that a confident tag implies (golden retriever -> dog -> animal).
  A parent need not be a label itself: then it is only ever implied, never competes.

Templates are bundled sets by name (``imagenet``: the CLIP paper's 80; ``photo``: ten
for personal photos; ``simple``: "a photo of a {}.") or literal strings with ``{}``.

Nothing here imports torch, so listing and checking label sets is cheap.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from .errors import LabelError
from .resources import bundled

DEFAULT_TEMPLATES = ("photo",)
_OPTIONS = {"parent", "synonyms", "prompts", "threshold"}
_STRUCTURED = {".yaml": "YAML", ".yml": "YAML", ".toml": "TOML"}


@dataclass(frozen=True)
class Label:
    name: str
    synonyms: tuple[str, ...] = ()
    prompts: tuple[str, ...] = ()  # whole prompts, used without a template
    parent: str | None = None
    threshold: float | None = None  # probability; None: the run's own threshold


@dataclass(frozen=True)
class LabelSet:
    name: str
    labels: tuple[Label, ...]
    templates: tuple[str, ...] = ()  # the set's own default templates, if it names any
    source: str = ""  # where it was read from, for messages
    parents: dict[str, str] = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        names = [label.name for label in self.labels]
        if not names:
            raise LabelError(f"the label set {self.source or self.name} has no labels")
        seen: set[str] = set()
        for name in names:
            if name in seen:
                raise LabelError(f"the label {name!r} appears twice in {self.source or self.name}",
                                 hint="every label must be unique; use synonyms for other names")
            seen.add(name)
        self.parents.update({label.name: label.parent for label in self.labels if label.parent})
        for name in self.parents:
            self.ancestors(name)  # raises on a cycle

    @property
    def names(self) -> list[str]:
        return [label.name for label in self.labels]

    def ancestors(self, name: str) -> list[str]:
        """The broader labels ``name`` implies, nearest first."""
        chain: list[str] = []
        while (name := self.parents.get(name)) is not None:
            if name in chain:
                raise LabelError(f"the parents of {chain[0]!r} form a cycle in {self.source or self.name}: "
                                 + " -> ".join(chain + [name]))
            chain.append(name)
        return chain

    @classmethod
    def of_examples(cls, name: str, names: Iterable[str], known: str | os.PathLike | LabelSet | None = None,
                    ) -> "LabelSet":
        """The label set of an examples folder whose sub-folders are called ``names``: those
        names as labels, or, given ``known`` (a set, a bundled set's name or a label file),
        those labels of it, with their prompts, synonyms and parents."""
        if known is None:
            return cls(name, tuple(Label(n) for n in names), source=name)
        return (known if isinstance(known, LabelSet) else cls.load(known)).subset(list(names))

    def subset(self, names: list[str]) -> "LabelSet":
        """These labels of the set, in this order, with their options and the set's templates."""
        known = {lb.name: lb for lb in self.labels}
        unknown = [n for n in names if n not in known]
        if unknown:
            raise LabelError(f"not labels of {self.name}: {', '.join(unknown)}",
                             hint=f"see `clipsearch labels {self.source or self.name}`")
        # The whole parent map: a picked label still implies parents that were not picked.
        return LabelSet(self.name, tuple(known[n] for n in names), self.templates, self.source, dict(self.parents))

    def prompts(self, templates: tuple[str, ...]) -> tuple[list[str], list[int]]:
        """Every prompt, and the index of the label each one stands for."""
        texts: list[str] = []
        owners: list[int] = []
        for i, label in enumerate(self.labels):
            for name in (label.name, *label.synonyms):
                texts.extend(t.replace("{}", name) for t in templates)
            texts.extend(label.prompts)
            owners.extend([i] * (len(texts) - len(owners)))
        return texts, owners

    def key(self, templates: tuple[str, ...], model: str) -> str:
        """Names the label embeddings of this set, these templates and this model."""
        spec = [[lb.name, lb.synonyms, lb.prompts] for lb in self.labels]
        blob = json.dumps([model, templates, spec], ensure_ascii=False)
        return hashlib.sha256(blob.encode()).hexdigest()[:24]

    @classmethod
    def load(cls, spec: str | os.PathLike) -> "LabelSet":
        """A bundled set by name, or a label file (``.txt``, ``.yaml``/``.yml``, ``.toml``)."""
        path = Path(spec).expanduser()
        if not path.is_file():
            path = _bundled_sets().get(str(spec), path)
        if not path.is_file():
            raise LabelError(f"no label set or label file called {str(spec)!r}",
                             hint=f"use a file path or a bundled set: {', '.join(sorted(_bundled_sets()))}")
        bundled_name = next((n for n, p in _bundled_sets().items() if p == path), None)
        kind = _STRUCTURED.get(path.suffix.lower())
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise LabelError(f"cannot read the label file {path}: {exc}") from exc
        name = bundled_name or path.stem
        if kind is None:
            labels = tuple(Label(line) for line in _lines(text))
            return cls(name, labels, source=str(path))
        data = _parse(text, kind, path)
        return cls(bundled_name or str(data.get("name") or name), _labels(data.get("labels"), path),
                   templates=tuple(data.get("templates") or ()), source=str(path))


def resolve_templates(specs: tuple[str, ...] | list[str]) -> tuple[str, ...]:
    """Templates from bundled set names and literal ``{}`` strings, in order, without repeats."""
    sets = _bundled_templates()
    out: list[str] = []
    for spec in specs:
        if spec in sets:
            out.extend(_lines(sets[spec].read_text(encoding="utf-8")))
        elif "{}" in spec:
            out.append(spec)
        else:
            raise LabelError(f"the template {spec!r} has no {{}} for the label",
                             hint=f"write it like 'a photo of a {{}}.', or name a bundled set: "
                                  f"{', '.join(sorted(sets))}")
    if not out:
        raise LabelError("no prompt templates were given")
    return tuple(dict.fromkeys(out))


def available_label_sets() -> dict[str, Path]:
    """The bundled label sets, by name."""
    return dict(sorted(_bundled_sets().items()))


def available_templates() -> dict[str, Path]:
    return dict(sorted(_bundled_templates().items()))


def _bundled_sets() -> dict[str, Path]:
    return {p.stem: p for p in (bundled("data") / "labels").iterdir()
            if p.suffix.lower() in (".txt", *_STRUCTURED)}


def _bundled_templates() -> dict[str, Path]:
    return {p.stem: p for p in (bundled("data") / "templates").glob("*.txt")}


def _lines(text: str) -> list[str]:
    """Non-blank lines that are not ``#`` comments."""
    return [s for line in text.splitlines() if (s := line.strip()) and not s.startswith("#")]


def _parse(text: str, kind: str, path: Path) -> dict:
    try:
        if kind == "TOML":
            import tomllib

            data = tomllib.loads(text)
        else:
            data = _yaml_load(text)
    except Exception as exc:  # each parser has its own error types; all mean a bad file
        raise LabelError(f"{path} is not valid {kind}: {str(exc).splitlines()[0]}") from exc
    if not isinstance(data, dict) or "labels" not in data:
        raise LabelError(f"{path} has no 'labels' section",
                         hint="see `clipsearch labels --help` for the format")
    return data


def _yaml_load(text: str):
    """``yaml.safe_load``, except that a repeated key is an error: PyYAML would silently
    keep the last one, and a label listed twice is a mistake worth hearing about."""
    import yaml

    class UniqueKeys(yaml.SafeLoader):
        def construct_mapping(self, node, deep=False):
            seen = set()
            for key_node, _ in node.value:
                key = self.construct_object(key_node, deep=deep)
                if key in seen:
                    raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}", key_node.start_mark)
                seen.add(key)
            return super().construct_mapping(node, deep)

    return yaml.load(text, Loader=UniqueKeys)


def _labels(raw, path: Path) -> tuple[Label, ...]:
    """Labels from a ``labels:`` section: a mapping of name -> options, or a list of names."""
    if isinstance(raw, list):
        raw = {str(item): None for item in raw}
    if not isinstance(raw, dict):
        raise LabelError(f"the 'labels' section of {path} must map label names to options")
    labels = []
    for name, options in raw.items():
        options = options or {}
        if not isinstance(options, dict) or set(options) - _OPTIONS:
            raise LabelError(f"label {name!r} in {path} has unknown options: "
                             f"{sorted(set(options) - _OPTIONS) if isinstance(options, dict) else options!r}",
                             hint=f"a label may have: {', '.join(sorted(_OPTIONS))}")
        threshold = options.get("threshold")
        if threshold is not None and not (isinstance(threshold, (int, float)) and 0 <= threshold <= 1):
            raise LabelError(f"the threshold of {name!r} in {path} must be a probability in [0, 1]")
        labels.append(Label(str(name).strip(), _strings(options.get("synonyms"), name, path),
                            _strings(options.get("prompts"), name, path),
                            str(options["parent"]).strip() if options.get("parent") else None,
                            float(threshold) if threshold is not None else None))
    return tuple(labels)


def _strings(value, name, path: Path) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise LabelError(f"the synonyms and prompts of {name!r} in {path} must be lists of strings")
    return tuple(v.strip() for v in value if v.strip())
