"""The exception hierarchy shared by every stage.

Every error the CLI reports is an :class:`ApplianceError`; each stage raises
its own subclass so callers can tell a bad spec from a failed verification.
Each class carries the process exit code the CLI uses for it (see README).
"""

from __future__ import annotations


class ApplianceError(Exception):
    """Base of every error appliance reports to a user."""

    exit_code = 1


class UsageError(ApplianceError):
    """A command was given a missing file, a bad directory or a bad option value."""

    exit_code = 2


class SpecError(ApplianceError):
    """The spec file (appliance.toml) is missing or invalid."""

    exit_code = 2


class BundleError(ApplianceError):
    """Building a bundle failed (resolution, download, hash, SBOM, signing)."""

    exit_code = 3


class AuditError(BundleError):
    """The vulnerability audit found vulnerabilities or could not run."""

    exit_code = 4


class VerifyError(ApplianceError):
    """A bundle failed verification. ``problems`` lists (path, reason) pairs.

    The exit code is 10 (integrity or content), 11 (signatures) or 12 (policy):
    ``appliance.verify.VerifyReport.exit_code`` sets it on the instance.
    """

    exit_code = 10

    def __init__(self, message: str, problems: list[tuple[str, str]] | None = None):
        super().__init__(message)
        self.problems = problems or []


class InstallError(ApplianceError):
    """Installing a verified bundle failed; the previous install is intact."""

    exit_code = 20


class HarnessError(ApplianceError):
    """The agent harness failed outside the loop's own error handling."""

    exit_code = 30
