"""Run reports (Markdown + self-contained HTML) and the backbone-swap study next to the paper's numbers."""
from .build import build_report, build_study_report
from .run_data import RunData, load_run

__all__ = ["build_report", "build_study_report", "load_run", "RunData"]
