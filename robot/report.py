"""Plain-text tables and summaries printed by the CLI and the benchmarks."""

from __future__ import annotations

import sys
from collections import Counter
from typing import Any, Sequence


def format_table(headers: Sequence[str], rows: Sequence[Sequence[Any]], title: str | None = None) -> str:
    """A left-aligned text table; floats get 3 significant decimals, None prints as '-'."""

    def cell(v: Any) -> str:
        if v is None:
            return "-"
        if isinstance(v, float):
            return f"{v:,.0f}" if abs(v) >= 100 else f"{v:.3g}"
        return str(v)

    body = [[cell(v) for v in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in body)) if body else len(h) for i, h in enumerate(headers)]
    line = lambda cells: "  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip()  # noqa: E731
    out = [title] if title else []
    out += [line(headers), line(["-" * w for w in widths])]
    out += [line(r) for r in body]
    return "\n".join(out)


def human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n:.1f} GB"


def store_summary(store: Any) -> str:
    """What `robot info` prints for a ``ZarrEpisodeStore``."""
    metas = store.metas
    lengths = [e - s for s, e in (store.episode_bounds(i) for i in range(store.num_episodes))]
    rate = store.success_rate()
    lines = [
        f"store      {store.path}",
        f"episodes   {store.num_episodes}",
        f"steps      {store.num_steps}"
        + (f"  (per episode: min {min(lengths)}, mean {sum(lengths) / len(lengths):.1f}, max {max(lengths)})" if lengths else ""),
        f"success    {'-' if rate is None else f'{rate:.1%} ({sum(m.success for m in metas)}/{len(metas)})'}",
        f"size       {human_bytes(store.size_on_disk())}",
    ]
    for label, attr in (("tasks", "task"), ("robots", "robot"), ("sources", "source")):
        counts = Counter(getattr(m, attr) for m in metas)
        if counts:
            lines.append(f"{label:<10} " + ", ".join(f"{k} ({v})" for k, v in counts.most_common()))
    lines.append("")
    lines.append(format_table(["key", "dtype", "shape"], [[k, f.dtype, "x".join(map(str, f.shape)) or "scalar"] for k, f in store.features.items()]))
    return "\n".join(lines)


LOG_FILE_BAR_INTERVAL_S = 60.0
"""Seconds between a progress bar's redraws when stderr is a file or a pipe, not a terminal: a bar redrawn each
second turns an hour's log into thousands of lines."""


def bar_interval(on_terminal: float) -> float:
    """A progress bar's redraw interval: ``on_terminal`` seconds on a terminal, a minute in a log file."""
    isatty = getattr(sys.stderr, "isatty", None)
    return on_terminal if isatty is not None and isatty() else LOG_FILE_BAR_INTERVAL_S
