"""Human-readable reports of a quantization: summary tables, report.md, attribution plots."""
