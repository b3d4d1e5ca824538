"""The CI gate: `qcal check` over a robustness report, and its JUnit output."""
