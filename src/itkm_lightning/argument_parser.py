"""The project's argument parser: a parse error is one line naming the key and what it allows, not a page of usage.

Used by ``itkm fit`` (fit_config.py) and ``itkm pretrain``.
"""

from __future__ import annotations

import re
import sys

from lightning.pytorch.cli import LightningArgumentParser


def one_line_parse_error(message: str) -> str:
    """Condense jsonargparse's (and nested pydantic's) multi-line reasons into ``key = value: reason``."""
    lines = [line.strip().lstrip("- ").strip() for line in str(message).splitlines() if line.strip()]
    key = re.search(r'Parser key "([^"]+)"', str(message))
    got = re.search(r"(?:Got|Given) value: (.*)$", str(message), flags=re.MULTILINE)
    reasons = []
    for line in lines:
        if line.startswith(("Input should", "Value error", "Expected a", "Assertion failed")):
            reason = re.sub(r"\s*\[type=.*$", "", line).removeprefix("Value error, ")
            reason = re.sub(r"\. Got value: .*$", "", reason)
            if reason not in reasons:
                reasons.append(reason)
    if key is not None and "Union subtypes" in message and "Given value type: <class 'dict'>" in message:
        # A class_path entry where a short name (str) is also allowed: its own error, not "expected str".
        errors = str(message).split("Errors:", 1)[-1].split("Given value type:")[0]
        items = [" ".join(part.split()) for part in re.split(r"\n\s*- ", errors) if part.strip()]
        items = [item for item in items if not item.startswith("Expected a <class 'str'>")]
        if items:
            return f"{key.group(1)}: {items[0]}"
    if key is None:
        unknown = re.fullmatch(r"Option '([^']+)' is not accepted", lines[0]) if lines else None
        if unknown:  # jsonargparse does not say where: an init_args key that the named class does not take
            return (f"{lines[0]}: no class_path in the config takes an argument {unknown.group(1)!r} "
                    "(misspelled init_args key?)")
        return lines[0] if lines else "invalid arguments"
    expected = [re.sub(r"<class '(\w+)'>", r"\1", r.removeprefix("Expected a ")).replace("NoneType", "None")
                .replace("typing.Literal[", "one of [")
                for r in reasons if r.startswith("Expected a ")]
    if expected:
        reasons = [f"expected {' or '.join(expected)}"] + [r for r in reasons if not r.startswith("Expected a ")]
    value = f" = {got.group(1).strip()}" if got else ""
    rest = [line.strip() for line in str(message)[key.end():].lstrip(":").strip().splitlines() if line.strip()]
    why = "; ".join(reasons) if reasons else (" ".join(rest[:3]) if rest else "invalid value")
    return f"{key.group(1)}{value}: {why}"


class ITKMArgumentParser(LightningArgumentParser):
    """Parse errors end with one line naming the key and what is allowed, not a page of usage."""

    def error(self, message: str, ex: Exception | None = None):  # type: ignore[override]
        sys.stderr.write(f"itkm: error: {one_line_parse_error(message)}\n"
                         "  (run with --help for the options, --print_config for the full config)\n")
        raise SystemExit(2)
