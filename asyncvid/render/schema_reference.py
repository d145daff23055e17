"""The job-file reference page (markdown) from the job file's JSON Schema, so it cannot drift from it.

One table row per field of a job: its type and bounds, its default and its description, all read
from :func:`.json_schema.job_file_schema` (what ``asyncvid schema`` prints). ``scripts/docs_pages.py``
writes it to ``docs/reference/job-file.md``; ``tests/docs/test_docs_pages.py`` fails when that
file is stale.
"""

from __future__ import annotations

import json

INTRO = """\
# Job file reference

Generated from the job file's JSON Schema (`asyncvid schema`) by `scripts/docs_pages.py`. How
job files work (defaults, outputs, manifests, resuming, devices and replicas) is in
[Job files](../jobs.md).

A job file is a YAML mapping:

| key | type | meaning |
|---|---|---|
{top}

`defaults` may set every job field except `name`; a job's own value wins. Fields that do not apply
to a job's kind (text-to-video `t2v`, image-to-video `i2v`) are skipped when they come from
`defaults` and refused when the job sets them.

## Job fields

| field | type | default | meaning |
|---|---|---|---|
"""

OUTRO = """
Rules the schema cannot express are checked by `asyncvid render` when the file loads, each reported
as one `FILE:LINE: job I 'name': field: problem` line: fields of the other kind, `prompt` (t2v) or
`image` (i2v) required, `conditioning_frames` required with `controlnet`, `crf` at most 51 for mp4,
`warmup` at least 1 when `stages` > 1, `cfg` > 1 only with guidance > 1, a `split` with as many
lists as `stages`, and that every file and folder named exists and is what the field needs.

For editors, save the schema beside your job files and name it on their first line:

```bash
asyncvid schema --out asyncvid-jobs.schema.json
```

```yaml
# yaml-language-server: $schema=asyncvid-jobs.schema.json
```
"""


def _cell(text: str) -> str:
    """``text`` as one markdown table cell: one line, ``|`` escaped, ``<name>`` shown, not taken as HTML."""
    return " ".join(str(text).split()).replace("|", "\\|").replace("<", "&lt;").replace(">", "&gt;")


def type_of(prop: dict) -> str:
    """A field's JSON type with its bounds, e.g. ``integer >= 1``, ``"mp4" | "gif"``; ``null`` is
    left out (an unset optional field is simply absent)."""
    options = [o for o in prop.get("anyOf", [prop]) if o.get("type") != "null"]
    words = []
    for option in options:
        if "enum" in option:
            words.append(" \\| ".join(f"`{json.dumps(v)}`" for v in option["enum"]))
            continue
        word = option.get("type", "any")
        bounds = [f">= {option['minimum']}" if "minimum" in option else "",
                  f"> {option['exclusiveMinimum']}" if "exclusiveMinimum" in option else "",
                  f"<= {option['maximum']}" if "maximum" in option else "",
                  f"< 2^63" if option.get("exclusiveMaximum") == 2 ** 63 else
                  (f"< {option['exclusiveMaximum']}" if "exclusiveMaximum" in option else ""),
                  ]
        word = f"non-empty {word}" if option.get("minLength") == 1 else word
        words.append(" ".join([word] + [", ".join(b for b in bounds if b)]).strip())
    return " or ".join(words) if words else "any"


def default_of(name: str, prop: dict, required: list[str]) -> str:
    if name in required:
        return "required"
    if prop.get("default") is None:
        return "—"  # no fixed default: unset, or one that depends on the job (its meaning says)
    return f"`{json.dumps(prop['default'])}`"


def job_file_page(schema: dict | None = None) -> str:
    """The whole page, for ``schema`` (default: :func:`~.json_schema.job_file_schema`)."""
    if schema is None:
        from .json_schema import job_file_schema

        schema = job_file_schema()
    top = schema["properties"]
    top_rows = [f"| `{key}` | {'required, ' if key in schema.get('required', []) else ''}{top[key].get('type', 'object')} "
                f"| {_cell(top[key].get('description', ''))} |" for key in top]
    item = top["jobs"]["items"]
    required = item.get("required", [])
    rows = [f"| `{name}` | {type_of(prop)} | {default_of(name, prop, required)} | {_cell(prop.get('description', ''))} |"
            for name, prop in item["properties"].items()]
    return INTRO.format(top="\n".join(top_rows)) + "\n".join(rows) + "\n" + OUTRO
