"""Errors as FHIR ``OperationOutcome`` (http.html: every error under ``/fhir`` carries one).

Each bad field becomes an issue whose ``expression`` is its FHIRPath (``Patient.name[0]
.family``) or, for a search or operation parameter, whose ``diagnostics`` names it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from mpi.domain.errors import FieldProblem

#: The issue type (http://hl7.org/fhir/issue-type) for each HTTP status.
ISSUE_CODES = {
    400: "invalid", 401: "login", 403: "forbidden", 404: "not-found", 405: "not-supported",
    406: "not-supported", 409: "conflict", 410: "deleted", 412: "conflict",
    413: "too-long", 415: "not-supported", 422: "processing", 428: "required",
    429: "throttled", 500: "exception", 503: "transient",
}


def operation_outcome(status: int, diagnostics: str | None, *,
                      problems: Sequence[FieldProblem] = (), severity: str | None = None,
                      code: str | None = None) -> dict[str, Any]:
    """An OperationOutcome for an answer with HTTP ``status``."""
    severity = severity or ("error" if status >= 400 else "information")
    code = code or ISSUE_CODES.get(status, "processing" if status < 500 else "exception")
    issues: list[dict[str, Any]] = []
    for problem in problems:
        issue: dict[str, Any] = {"severity": severity, "code": "invalid" if status in (
            400, 422) else code}
        if problem.field.startswith(("Patient", "Parameters")):
            issue["diagnostics"] = problem.reason
            issue["expression"] = [problem.field]
        else:
            issue["diagnostics"] = f"{problem.field}: {problem.reason}"
        issues.append(issue)
    if not issues:
        issue = {"severity": severity, "code": code}
        if diagnostics:
            issue["diagnostics"] = diagnostics
        issues.append(issue)
    elif diagnostics:
        issues.insert(0, {"severity": severity, "code": code, "diagnostics": diagnostics})
    return {"resourceType": "OperationOutcome", "issue": issues}
