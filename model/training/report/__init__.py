"""The report a data team reads: report.md, report.json and their charts."""
