"""The published JSON Schema of the certificate (``certificate.schema.json``, draft 2020-12).

Every certificate the harness writes is validated against it first
(:func:`cgeom_verify.report.write_reports`), and so is every certificate that
``replay``, ``diff`` and ``merge`` read: a file that does not conform is refused
with the JSON path of the first offending field.
"""

from __future__ import annotations

import json
from functools import cache
from importlib import resources

from ..certificate import CertificateError
from ..text import clip

__all__ = ["SCHEMA_FILE", "schema", "validate"]

SCHEMA_FILE = "certificate.schema.json"


@cache
def schema() -> dict:
    return json.loads(resources.files(__name__).joinpath(SCHEMA_FILE).read_text(encoding="utf-8"))


@cache
def _validator():
    from jsonschema import Draft202012Validator  # imported on first use: a second or so

    Draft202012Validator.check_schema(schema())
    return Draft202012Validator(schema(), format_checker=Draft202012Validator.FORMAT_CHECKER)


def validate(cert: dict, where: str = "certificate") -> None:
    """Raise :class:`CertificateError` naming the first field that breaks the schema."""
    from jsonschema.exceptions import best_match

    error = best_match(_validator().iter_errors(cert))
    if error is not None:
        path = "/".join(str(p) for p in error.absolute_path) or "(top level)"
        raise CertificateError(f"{where}: does not conform to the certificate schema at "
                               f"{path}: {clip(error.message, 300)}")
