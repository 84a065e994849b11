"""A report as a list of blocks, rendered to Markdown (figures as relative PNG links) and to one self-contained
HTML file (figures embedded as base64 data URIs, inline CSS, no external references)."""
import base64
import html
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Sequence, Union


@dataclass
class Heading:
    text: str
    level: int = 2


@dataclass
class Paragraph:
    text: str


@dataclass
class Table:
    headers: Sequence[str]
    rows: Sequence[Sequence[str]]
    caption: Optional[str] = None


@dataclass
class Figure:
    path: Path  # PNG written next to the report
    caption: str


@dataclass
class Code:
    text: str
    title: str = ""


Block = Union[Heading, Paragraph, Table, Figure, Code]

_CSS = """
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; margin: 2em auto; max-width: 1100px;
       color: #222; line-height: 1.45; padding: 0 1em; }
table { border-collapse: collapse; margin: 0.6em 0 1.2em; font-size: 0.92em; }
th, td { border: 1px solid #ccc; padding: 3px 8px; text-align: right; }
th:first-child, td:first-child { text-align: left; }
th { background: #f2f2f2; }
caption { caption-side: top; text-align: left; font-weight: 600; padding-bottom: 4px; }
figure { margin: 1em 0; } figure img { max-width: 100%; border: 1px solid #ddd; }
figcaption { font-size: 0.9em; color: #555; }
pre { background: #f7f7f7; padding: 0.8em; overflow-x: auto; font-size: 0.85em; border: 1px solid #e2e2e2; }
h1 { border-bottom: 2px solid #444; } h2 { border-bottom: 1px solid #bbb; margin-top: 2em; }
"""


def _md_cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def render_markdown(title: str, blocks: List[Block], out_dir: Path) -> str:
    parts = [f"# {title}\n"]
    for block in blocks:
        if isinstance(block, Heading):
            parts.append(f"{'#' * block.level} {block.text}\n")
        elif isinstance(block, Paragraph):
            parts.append(f"{block.text}\n")
        elif isinstance(block, Table):
            lines = [f"**{block.caption}**\n"] if block.caption else []
            lines.append("| " + " | ".join(_md_cell(h) for h in block.headers) + " |")
            lines.append("|" + "|".join(["---"] + ["---:"] * (len(block.headers) - 1)) + "|")
            lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in block.rows]
            parts.append("\n".join(lines) + "\n")
        elif isinstance(block, Figure):
            rel = Path(block.path).relative_to(out_dir).as_posix()
            parts.append(f"![{block.caption}]({rel})\n\n*{block.caption}*\n")
        elif isinstance(block, Code):
            title = f"**{block.title}**\n\n" if block.title else ""
            parts.append(f"{title}```\n{block.text.rstrip()}\n```\n")
    return "\n".join(parts)


def _png_data_uri(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(Path(path).read_bytes()).decode("ascii")


def render_html(title: str, blocks: List[Block]) -> str:
    esc = html.escape
    parts = [f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{esc(title)}</title>"
             f"<style>{_CSS}</style></head><body>\n<h1>{esc(title)}</h1>"]
    for block in blocks:
        if isinstance(block, Heading):
            parts.append(f"<h{block.level}>{esc(block.text)}</h{block.level}>")
        elif isinstance(block, Paragraph):
            parts.append(f"<p>{esc(block.text)}</p>")
        elif isinstance(block, Table):
            caption = f"<caption>{esc(block.caption)}</caption>" if block.caption else ""
            head = "".join(f"<th>{esc(str(h))}</th>" for h in block.headers)
            body = "".join("<tr>" + "".join(f"<td>{esc(str(c))}</td>" for c in row) + "</tr>" for row in block.rows)
            parts.append(f"<table>{caption}<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")
        elif isinstance(block, Figure):
            parts.append(f"<figure><img alt=\"{esc(block.caption)}\" src=\"{_png_data_uri(block.path)}\">"
                         f"<figcaption>{esc(block.caption)}</figcaption></figure>")
        elif isinstance(block, Code):
            summary = esc(block.title or "details")
            parts.append(f"<details><summary>{summary}</summary><pre>{esc(block.text)}</pre></details>")
    parts.append("</body></html>\n")
    return "\n".join(parts)
