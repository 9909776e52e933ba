"""The suite's cases, one module per grade of the national test centre's self-test (A–E), the
2022 additions and robustness; :mod:`.common` holds what they share. Importing this package
declares every case in :data:`conformance.suite.case.REGISTRY`."""

from conformance.suite.cases import (
    gb2022,
    grade_a,
    grade_b,
    grade_c,
    grade_d,
    grade_e,
    robustness,
)

__all__ = ["gb2022", "grade_a", "grade_b", "grade_c", "grade_d", "grade_e", "robustness"]
