"""The promotion gate: the verdict (judge), the rows it is judged on, the paired
evidence, and the baseline and guard checks."""
