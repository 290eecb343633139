"""Bad-input accounting: each skipped raw input as `path: reason`, counted by kind.

A build writes `<builder.data_dir>/problems.json` (docs/reliability.md), or,
when a split has no usable video, `<builder.data_dir>.problems.json` (the
dataset directory itself is removed by TFDS):

    {"dataset": "something_something_v2/default/1.0.0",
     "splits": {"train": {"listed": M, "built": N, "skipped": K,
                          "reasons": {"unreadable video": 2, ...},
                          "problems": ["<path>: <reason>", ...]}, ...}}

`summary` turns it into the closing line of `python -m rsa_jax.data prepare`.
"""

from __future__ import annotations

import json
import os
import re
from typing import Any, Self

FILE_NAME = 'problems.json'

# (kind, pattern on the reason): first match wins. The reasons are written by
# rsa_jax.data.decode and rsa_jax.data.builders; keep the two in step.
_KINDS = (
    ('missing file', r'not found'),
    ('empty file', r'empty file|zero bytes'),
    ('truncated video', r'^truncated'),
    ('unreadable video', (r'cannot open video|no video stream|decoding failed|'
     r'no decodable frames|no frames decoded')),
    ('frame folder gap', r'frames missing|no frames named'),
    ('not a JPEG', r'not a decodable JPEG|cannot read frame'),
    ('unknown label', r'label .* is not'),
    ('bad frame count', r'frame count'),
    ('bad encoding', r'not UTF-8'),
    ('duplicate id', r'duplicate id'),
    ('bad line', r'expected|lacks'),
)


def kind_of(reason: str) -> str:
    """The counted category of a skip reason ('other' if none matches)."""
    for kind, pattern in _KINDS:
        if re.search(pattern, reason):
            return kind
    return 'other'


class Problem(str):
    """`path: reason` as a plain string, keeping its parts and kind."""

    path: str
    reason: str
    kind: str

    def __new__(cls, path: str, reason: str) -> Self:
        self = super().__new__(cls, f'{path}: {reason}')
        self.path, self.reason, self.kind = path, reason, kind_of(reason)
        return self


def report(dataset: str, listed: dict[str, int],
           problems: dict[str, list[Problem]]) -> dict[str, Any]:
    """problems.json content for one build."""
    splits = {}
    for split, total in listed.items():
        found = problems.get(split, [])
        reasons: dict[str, int] = {}
        for p in found:
            kind = getattr(p, 'kind', None) or kind_of(str(p))
            reasons[kind] = reasons.get(kind, 0) + 1
        splits[split] = {'listed': total, 'built': total - len(found),
                             'skipped': len(found), 'reasons': reasons,
                             'problems': [str(p) for p in found]}
    return {'dataset': dataset, 'splits': splits}


def write(path: str, content: dict[str, Any]) -> str:
    """Writes a problems report (`<dataset dir>/problems.json`); returns its path."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, 'w', encoding='utf-8') as f:
        json.dump(content, f, indent=1, ensure_ascii=False)
    return path


def read(data_dir: str) -> dict[str, Any] | None:
    """problems.json of a built dataset, or None (built before it was written)."""
    path = os.path.join(data_dir, FILE_NAME)
    if not os.path.isfile(path):
        return None
    with open(path, encoding='utf-8') as f:
        return json.load(f)


def summary(data_dir: str, content: dict[str, Any]) -> str:
    """`built N of M videos per split; K skipped (reasons), see <path>`."""
    splits = content['splits']
    built = ', '.join(f"{s} {v['built']} of {v['listed']}" for s, v in splits.items())
    skipped = sum(v['skipped'] for v in splits.values())
    reasons: dict[str, int] = {}
    for v in splits.values():
        for kind, n in v['reasons'].items():
            reasons[kind] = reasons.get(kind, 0) + n
    why = ', '.join(f'{n} {k}' for k, n in sorted(reasons.items(), key=lambda x: -x[1]))
    line = f"{content['dataset']}: built {built} videos; {skipped} skipped"
    if skipped:
        line += f' ({why})'
    return f'{line}, see {os.path.join(data_dir, FILE_NAME)}'
