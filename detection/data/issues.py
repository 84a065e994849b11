"""Bad-data policy: ``data.on_error: skip|raise`` and a counted summary of everything skipped or repaired.

Each problem has a *kind* (below). Under ``raise`` a problem that would lose data stops the run with one
``DataError`` naming the file and the record; under ``skip`` the record (box or image) is dropped, the first few
occurrences are printed, and ``summary()`` gives the counts. Repairs that lose nothing (box clipped to the image,
grayscale/CMYK/alpha converted to RGB, EXIF orientation applied) are counted but never raise.
"""
import sys
from collections import Counter, OrderedDict
from typing import Dict, List, Optional, Tuple

ON_ERROR = ("skip", "raise")

# kind → what happens under "skip" (for messages and docs/DETECTION.md).
ERROR_KINDS = OrderedDict([
    ("malformed_annotation", "image skipped (annotation XML/JSON record unreadable)"),
    ("missing_image", "image skipped (file not found)"),
    ("corrupt_image", "image skipped (cannot be decoded or truncated)"),
    ("size_mismatch", "image skipped (decoded size differs from the annotation's width/height)"),
    ("invalid_box", "box dropped (zero-area, inverted, non-finite or entirely outside the image)"),
    ("unknown_category", "box dropped (category id not in the category list)"),
    ("duplicate_image_id", "later image with the same id skipped"),
    ("too_large_image", "image skipped (more pixels than data.max_image_pixels)"),
])
REPAIR_KINDS = OrderedDict([
    ("clipped_box", "box partly outside the image clipped to it"),
    ("converted_mode", "grayscale/CMYK/palette/alpha image converted to RGB"),
    ("exif_rotated", "EXIF orientation applied"),
    ("empty_image", "image without (usable) objects left out of training (data.filter_empty)"),
    ("degenerate_after_transform", "box that became degenerate after augmentation dropped"),
])

Issue = Tuple[str, str, str]  # (kind, file, detail)


class DataError(ValueError):
    """Bad input data under ``on_error: raise``; the message names the file, the record and what was expected."""


class DataIssues:
    """Counts problems by kind; raises for errors under ``raise``; prints the first ``verbose_first`` of each kind."""

    def __init__(self, on_error: str = "skip", verbose_first: int = 3, stream=None):
        if on_error not in ON_ERROR:
            raise ValueError(f"data.on_error must be one of {ON_ERROR}, got {on_error!r}")
        self.on_error = on_error
        self.verbose_first = verbose_first
        self.counts: Counter = Counter()  # distinct problems per kind (a bad image met every epoch counts once)
        self.occurrences: Counter = Counter()
        self.examples: Dict[str, List[str]] = {}
        self.stream = stream
        self._seen = set()

    def error(self, kind: str, file: str, detail: str) -> None:
        """A data-losing problem: raise under ``raise``, otherwise count it (the caller skips the record)."""
        if kind not in ERROR_KINDS:
            raise KeyError(f"unknown data error kind {kind!r}")
        if self.on_error == "raise":
            raise DataError(f"{file}: {detail} [{kind}; set data.on_error=skip to skip such records]")
        self._count(kind, file, detail)

    def repair(self, kind: str, file: str, detail: str) -> None:
        if kind not in REPAIR_KINDS:
            raise KeyError(f"unknown data repair kind {kind!r}")
        self._count(kind, file, detail)

    def record(self, issue: Issue) -> None:
        """Count a problem reported by a DataLoader worker (already judged against the policy there)."""
        kind, file, detail = issue
        self._count(kind, file, detail)

    def _count(self, kind: str, file: str, detail: str) -> None:
        self.occurrences[kind] += 1
        if (kind, file, detail) in self._seen:
            return
        self._seen.add((kind, file, detail))
        self.counts[kind] += 1
        shown = self.examples.setdefault(kind, [])
        if len(shown) < self.verbose_first:
            shown.append(f"{file}: {detail}")
            if kind in ERROR_KINDS:
                print(f"[resdet] warning: {file}: {detail} ({ERROR_KINDS[kind]})", file=self.stream or sys.stderr)

    def merge(self, other: "DataIssues") -> None:
        """Add another process's (or a checkpoint's) problems; problems both have seen count once."""
        self.occurrences.update(other.occurrences)
        for key in other._seen - self._seen:
            self._seen.add(key)
            self.counts[key[0]] += 1
        for kind, examples in other.examples.items():
            shown = self.examples.setdefault(kind, [])
            shown.extend(e for e in examples[: max(0, self.verbose_first - len(shown))] if e not in shown)

    def state_dict(self) -> dict:
        return {"on_error": self.on_error, "problems": sorted(self._seen), "occurrences": dict(self.occurrences)}

    def load_state_dict(self, state: dict) -> None:
        for kind, file, detail in state.get("problems", []):
            if (kind, file, detail) not in self._seen:
                self._seen.add((kind, file, detail))
                self.counts[kind] += 1
        self.occurrences.update(state.get("occurrences", {}))

    def as_dict(self) -> Dict[str, int]:
        return dict(sorted(self.counts.items()))

    def summary(self, title: str = "data") -> Optional[str]:
        """One line per kind with its count and policy, or None when nothing happened."""
        if not self.counts:
            return None
        lines = [f"[resdet] {title}: data issues (on_error={self.on_error}):"]
        for kind, n in sorted(self.counts.items()):
            what = ERROR_KINDS.get(kind) or REPAIR_KINDS.get(kind, kind)
            example = self.examples.get(kind)
            times = self.occurrences.get(kind, n)
            seen = f" ({times} times)" if times > n else ""
            lines.append(f"  {kind}: {n}{seen} — {what}" + (f"; e.g. {example[0]}" if example else ""))
        return "\n".join(lines)
