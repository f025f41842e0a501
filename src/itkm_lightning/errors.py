"""The project's errors: problems a user can fix, which ``itkm`` reports as one line (exit code 2).

Every error class of the project derives from :class:`ITKMError` (and from the builtin it refines, so
``except ValueError`` keeps working). The command catches only these and pydantic's ``ValidationError``
(:func:`builtin_user_errors`); any other exception, a bare ``ValueError`` included, is a bug and shows its
traceback. Imports nothing heavy: ``itkm --help`` and the light tools use it.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager


class ITKMError(Exception):
    """Base of the project's error classes: a message that names the problem and the fix."""


class ConfigError(ITKMError, ValueError):
    """A setting or argument that cannot work as given."""


class DataFormatError(ITKMError, ValueError):
    """Data that is there but not usable as it is: a malformed file or a dataset not in the expected layout."""


class MissingPackageError(ITKMError, ImportError):
    """An optional package (onnx, timm, faiss, hdbscan, ...) that the requested feature needs is not installed."""


class DataUnavailableError(ITKMError, FileNotFoundError):
    """Configured data (a dataset, a config file) that is not there or not in the expected layout."""

    @classmethod
    def listing(cls, problems: list[str]) -> DataUnavailableError:
        """One error for every problem at once: fixing one, rerunning and meeting the next costs a job each time."""
        if len(problems) == 1:
            return cls(problems[0])
        return cls(f"{len(problems)} configured datasets are not usable:\n"
                   + "\n".join(f"({i}) {p}" for i, p in enumerate(problems, 1)))


def builtin_user_errors() -> tuple[type[BaseException], ...]:
    """The one foreign kind reported as one line like :class:`ITKMError`: pydantic's ``ValidationError``, since
    config values are validated by pydantic. A bare ``ValueError``/``FileNotFoundError``/``ImportError`` is a bug
    and keeps its traceback."""
    from pydantic import ValidationError

    return (ValidationError,)


def error_line(err: BaseException) -> str:
    """The message of ``err`` as the command prints it (pydantic's and DataLoader workers' wrapping removed)."""
    from pydantic import ValidationError

    if isinstance(err, ValidationError) and err.errors():
        first = err.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ()))
        msg = str(first.get("msg", "")).removeprefix("Value error, ")
        return f"invalid {err.title}{' ' + where if where else ''}: {msg}"
    text = str(err).strip()
    if text.startswith("Caught ") and "Original Traceback" in text:
        # Re-raised from a DataLoader worker: the original message is the last line, after "Type: ".
        last = text.splitlines()[-1]
        return last.split(": ", 1)[1] if ": " in last else last
    # Our messages may carry a few more lines (an expected folder layout); keep them, indented.
    lines = text.splitlines()[:60] if text else [type(err).__name__]
    return "\n  ".join(lines)


@contextmanager
def reported_as_one_line(prog: str, also: Callable[[], tuple[type[BaseException], ...]] = tuple) -> Iterator[None]:
    """Turn an :class:`ITKMError` (pydantic's ``ValidationError``, one of the classes ``also()`` returns) raised inside into
    ``<prog>: error: <message>`` and exit code 2 (``ITKM_DEBUG=1``: the traceback instead); anything else keeps
    its traceback. ``also`` is called only when something was raised (its imports may be heavy)."""
    try:
        yield
    except Exception as err:
        if os.environ.get("ITKM_DEBUG") or not isinstance(err, (ITKMError, *builtin_user_errors(), *also())):
            raise
        sys.stderr.write(f"{prog}: error: {error_line(err)}\n  (set ITKM_DEBUG=1 for the full traceback)\n")
        raise SystemExit(2) from None
