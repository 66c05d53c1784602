"""Reports over the lake and the batch evaluations (Markdown + PNG), free of any framework."""

from flead.reporting.anomaly_report import AnomalyReport, ReportError, build_report, evaluation_versions

__all__ = ["AnomalyReport", "ReportError", "build_report", "evaluation_versions"]
