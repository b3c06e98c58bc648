"""Errors raised by ncaas, each carrying the exit code the CLI uses.

The tree::

    NcaasError                     exit 1, root of everything below
    ├── BlueprintError             a blueprint file is missing or invalid
    ├── StorageError               storage unreachable, or a path refused
    │   ├── PathRefused            a user path leaves its group or is malformed
    │   └── SpecialFileRefused     a link, FIFO, device or socket where a file was expected
    ├── SubmissionRejected         a submission failed validation (exit 2)
    ├── JobNotFound                no job with that id (exit 4)
    ├── ExecutorError              a task could not be launched
    └── CertificateError           a certificate is unreadable or cannot be rerun
        └── CertificateForged      a certificate this platform did not sign as it is (exit 5)

Where a module has errors of its own, it defines them beside its code, under
the same root: ``EnvironmentBuildError`` and ``EnvironmentBroken`` (exit 3) in
:mod:`ncaas.isolation.environments`, ``SandboxError`` in
:mod:`ncaas.isolation.sandbox`, ``ServerRequestError`` in :mod:`ncaas.client`,
and the server's ``ServerError`` tree, each with its HTTP status, in
:mod:`ncaas.server.errors`.

Every message is written for the scientist who reads it: what is wrong and
how to fix it. Two places render them, each in one place: the CLI
(:func:`ncaas.cli.app._errors`: the message and the exit code) and the API
(one exception handler in :mod:`ncaas.server.app`: ``{"error": message}`` and
the HTTP status); no traceback reaches either.
"""

from __future__ import annotations

__all__ = [
    "BlueprintError",
    "CertificateError",
    "CertificateForged",
    "ExecutorError",
    "JobNotFound",
    "NcaasError",
    "PathRefused",
    "SpecialFileRefused",
    "StorageError",
    "SubmissionRejected",
]


class NcaasError(Exception):
    """Root of all ncaas errors."""

    exit_code = 1


class BlueprintError(NcaasError):
    """A blueprint file is missing, unreadable or invalid."""


class StorageError(NcaasError):
    """Storage is unreachable or an operation on it failed."""


class PathRefused(StorageError):
    """A user-supplied path is malformed or resolves outside its group."""


class SpecialFileRefused(StorageError):
    """A path is a link, FIFO, device or socket where a regular file was expected; it was not opened."""

    WORDS = {
        "symlink": "a symbolic link",
        "fifo": "a FIFO (named pipe)",
        "char-device": "a character device",
        "block-device": "a block device",
        "socket": "a socket",
        "folder": "a folder",
        "file": "a file",
        "changed": "a file replaced while it was being read",
    }  # how each kind is named in messages

    def __init__(self, path: str, kind: str):
        self.path, self.kind, self.words = path, kind, self.words_for(kind)
        super().__init__(
            f"{path} is {self.words}, not a regular file; ncaas reads only regular files (it was not opened)"
        )

    @classmethod
    def words_for(cls, kind: str) -> str:
        return cls.WORDS.get(kind, "a special file")


class SubmissionRejected(NcaasError):
    """A submission failed validation; ``problems`` lists every reason."""

    exit_code = 2

    def __init__(self, problems: list[str] | str, *, job: dict[str, str] | None = None):
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        self.job = job  # the rejected job (id, results_dir) when one was recorded
        super().__init__("; ".join(self.problems))


class AdmissionRefused(NcaasError):
    """A job the platform would make for a user (a rerun, a chain step, a curation) may not run:
    its group's budget would not hold it, or the pricing profile cannot price it."""

    exit_code = 2


class JobNotFound(NcaasError):
    """No job with the given id exists in the job database."""

    exit_code = 4


class ExecutorError(NcaasError):
    """A task could not be launched or supervised."""


class CertificateError(NcaasError):
    """A certificate is unreadable, or its run cannot be reproduced."""


class CertificateForged(CertificateError):
    """A certificate given by a user does not verify against this platform's signing keys."""

    exit_code = 5
