"""The explorer's pages: every page's url path, file under app/views/, title and icon, in
navigation order (`PAGES`). Pure data: app/main.py registers them, app/warm.py renders them,
the Findings page links to figures by url path."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class PageInfo:
    url_path: str
    file: str  # under app/views/
    title: str
    icon: str
    default: bool = False  # served at the root URL


# Every page, in navigation order. The Findings page links to figures by `url_path`.
PAGES: tuple[PageInfo, ...] = (
    PageInfo("findings", "findings.py", "Findings", ":material/fact_check:", default=True),
    PageInfo("overview", "overview.py", "Overview", ":material/table:"),
    PageInfo("running", "running.py", "Running", ":material/directions_run:"),
    PageInfo("runs", "runs.py", "Runs", ":material/table_rows:"),
    PageInfo("trial", "trial.py", "Trial", ":material/description:"),
    PageInfo("compare", "compare.py", "Compare runs", ":material/stacked_line_chart:"),
    PageInfo("parallel", "parallel.py", "Parallel coordinates", ":material/timeline:"),
    PageInfo("curves", "curves.py", "Curves", ":material/show_chart:"),
    PageInfo(
        "generalization", "generalization.py", "Generalization gap", ":material/compare_arrows:"
    ),
    PageInfo("time", "timing.py", "Time", ":material/timer:"),
    PageInfo("distance", "distance.py", "Distance", ":material/straighten:"),
    PageInfo("sharpness", "sharpness.py", "Sharpness", ":material/landscape:"),
    PageInfo("landscapes", "landscapes.py", "Landscapes", ":material/terrain:"),
    PageInfo("lr_batch", "lr_batch.py", "lr x batch size", ":material/grid_on:"),
    PageInfo("choose", "choose.py", "Choose a batch size", ":material/recommend:"),
    PageInfo("sql", "sql.py", "SQL", ":material/terminal:"),
)
PAGE_BY_URL = {p.url_path: p for p in PAGES}
