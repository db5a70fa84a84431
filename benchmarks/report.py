"""The results table in Markdown, and its place in benchmarks/README.md (between two markers, so
the hand-written explanations around it survive every run)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from benchmarks.figures import Figure
from benchmarks.procmem import MiB

__all__ = ["END", "START", "render", "write_readme"]

START = "<!-- results:start (written by python -m benchmarks) -->"
END = "<!-- results:end -->"

TITLES = {
    "1": "1. Download through MCP: `resources/read` over stdio",
    "2": "2. `save_file` of a large file",
    "3": "3. `upload_attachment` from a large file",
    "4": "4. Call overhead: `list_case_files` over stdio",
    "5": "5. Concurrency over streamable HTTP",
    "6": "6. Start-up to the first `tools/list`",
}


def render(figures: list[Figure], context: dict[str, Any]) -> str:
    sizes = context["sizes"]
    lines = [
        f"Run {context['date']} with `{context['command']}` ({context['duration']}); {context['machine']}.",
        f"Sizes: download {sizes.download / MiB:.0f} MiB, save/upload {sizes.big / MiB:.0f} MiB; "
        f"runs per figure: {sizes.runs} (save/upload {sizes.big_runs}, listing {sizes.listing_runs}, "
        f"concurrency {sizes.concurrency_runs}, start-up {sizes.startup_runs}).",
        "",
        f"Load before: `{context['load_before']}`  ",
        f"Load after: `{context['load_after']}`",
        "",
        "Figures are medians with the min-max of the runs in brackets; a ratio is computed per run "
        "against the baseline measured right beside it. Memory targets are judged on the worst run.",
    ]
    met = sum(1 for figure in figures if figure.met)
    missed = [figure for figure in figures if figure.met is False]
    lines += ["", f"**{met} targets met, {len(missed)} not met.**"]
    for case in sorted({figure.case for figure in figures}):
        lines += ["", f"### {TITLES[case]}", "", "| backend | figure | measured | target | result | detail |"]
        lines.append("|---|---|---|---|---|---|")
        for figure in (figure for figure in figures if figure.case == case):
            detail = "; ".join(part for part in (figure.detail, figure.note) if part)
            lines.append(
                f"| {figure.backend} | {figure.what} | {figure.shown()} | {figure.target} | "
                f"{figure.verdict} | {detail} |"
            )
    return "\n".join(lines) + "\n"


def write_readme(readme: Path, table: str) -> None:
    text = readme.read_text(encoding="utf-8")
    if START not in text or END not in text:
        raise RuntimeError(f"{readme} lacks the result markers {START!r} … {END!r}")
    head, _, rest = text.partition(START)
    _, _, tail = rest.partition(END)
    readme.write_text(f"{head}{START}\n{table}{END}{tail}", encoding="utf-8")
