"""Great Expectations 1.x, the way every stage uses it: suites stored as JSON beside the code that runs them (a
stage's suite.json in its folder), an ephemeral context (no gx/ folder, analytics off), a readable summary and an
HTML report per validation.

Suite files hold GX's own expectation JSON. A kwarg written as {"$PARAMETER": "name"} is GX's suite parameter: GX
fills it from the `expectation_parameters` given at validation time (so thresholds come from params.yaml, not from
the suite file), and GX names each failing row by the caller's id column (`unexpected_index_column_names`).
"""
from __future__ import annotations

import html
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from stgt_pipeline.errors import StageFailed, StgtError


@dataclass
class SuiteResult:
    suite: str
    success: bool
    summary: list[str]
    statistics: dict[str, Any]
    results: list[dict[str, Any]] = field(default_factory=list)
    # Each failed expectation's failing rows, all of them (results keeps 5 examples): the row's id column value and
    # the checked values, as GX lists them. Not in as_dict: on a web-scale table it is as long as the table.
    failing_rows: list[list[dict[str, Any]]] = field(default_factory=list, repr=False)

    def per_row_failures(self, id_column: str = "video_id") -> dict[str, list[str]] | None:
        """{row id: [why, ...]} when every failed expectation is about single, named rows (a value out of range, a
        missing file), so that dropping those rows is an answer; None when one is about the table as a whole (too few
        rows, a required split absent), could not be evaluated, or fails a row without an id."""
        failures: dict[str, list[str]] = {}
        for row, failing in zip(self.results, self.failing_rows):
            if row["success"]:
                continue
            if row.get("error") or not row.get("unexpected_count") or len(failing) != row["unexpected_count"]:
                return None
            what = _label(row)
            for item in failing:
                row_id = item.get(id_column)
                if row_id is None or (isinstance(row_id, float) and row_id != row_id):
                    return None
                values = ", ".join(f"{k}={_plain(v)!r}" for k, v in item.items() if k != id_column)
                failures.setdefault(str(row_id), []).append(f"{what}: {values}" if values else what)
        return failures

    def as_dict(self) -> dict[str, Any]:
        return {"suite": self.suite, "success": self.success, "summary": self.summary,
                "statistics": self.statistics, "results": self.results}


def validate_dataframe(
    df: pd.DataFrame,
    suite: Path,
    expectation_parameters: dict[str, Any] | None = None,
    html_path: str | Path | None = None,
    id_column: str = "video_id",
    title: str | None = None,
) -> SuiteResult:
    """Validate `df` against the suite file `suite` and explain every failure in one line; each failing row is
    named by its `id_column` value."""
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig
    from great_expectations.exceptions import SuiteParameterError

    suite = Path(suite)
    if id_column not in df.columns:  # GX would report every row expectation as failed, without saying why
        raise ValueError(f"{suite}: the validated table has no id column {id_column!r} to name failing rows by")
    spec = json.loads(suite.read_text(encoding="utf-8"))
    ctx = gx.get_context(mode="ephemeral")
    ctx.variables.progress_bars = ProgressBarsConfig(globally=False)
    batch_def = (ctx.data_sources.add_pandas("pandas").add_dataframe_asset(name=spec["name"])
                 .add_batch_definition_whole_dataframe("whole"))
    gx_suite = ctx.suites.add(gx.ExpectationSuite(name=spec["name"], expectations=spec["expectations"],
                                                  meta=spec.get("meta", {})))
    result_format = {"result_format": "COMPLETE", "unexpected_index_column_names": [id_column]}
    try:
        result = batch_def.get_batch(batch_parameters={"dataframe": df}).validate(
            gx_suite, result_format=result_format, expectation_parameters=expectation_parameters)
    except SuiteParameterError as exc:  # "No value found for $PARAMETER <name>": say which suite file asks for it
        raise StgtError(f"{suite}: {exc}; the stage gives this suite no such parameter") from None

    rows, summary, failing_rows = [], [], []
    for r in result.results:
        cfg = r.expectation_config
        kwargs = {k: v for k, v in cfg.kwargs.items() if k != "batch_id"}
        res = r.result or {}
        row = {
            "expectation": cfg.type,
            "kwargs": kwargs,
            "success": bool(r.success),
            "observed_value": _jsonable(res.get("observed_value")),
            "unexpected_count": res.get("unexpected_count"),
            "element_count": res.get("element_count"),
            # GX lists each failing row as {id_column: ..., <checked columns>: ...}
            "unexpected_examples": [str(i[id_column]) for i in (res.get("unexpected_index_list") or [])[:5]],
        }
        if r.exception_info and r.exception_info.get("raised_exception"):
            row["success"] = False
            row["error"] = r.exception_info.get("exception_message")
        rows.append(row)
        failing_rows.append(list(res.get("unexpected_index_list") or []) if not row["success"] else [])
        if not row["success"]:
            summary.append(_explain(row))
    stats = dict(result.statistics)
    stats["rows"] = len(df)
    success = bool(result.success) and all(r["success"] for r in rows)
    out = SuiteResult(suite=spec["name"], success=success, summary=summary, statistics=_jsonable(stats), results=rows,
                      failing_rows=failing_rows)
    if html_path is not None:
        Path(html_path).write_text(render_html(out, title or f"Data quality: {out.suite}"), encoding="utf-8")
    return out


def gate(stage: str, df: pd.DataFrame, suite: Path, expectation_parameters: dict[str, Any], tmp: Path, failed: Path,
         title: str, evidence: tuple[str, ...] = ()) -> SuiteResult:
    """A stage's quality gate on its own output: `<suite>_suite.html/.json` go into the temporary output `tmp`;
    on failure they (and the `evidence` files of tmp) are kept in `failed` and StageFailed names the report and
    each failed expectation, so the previous good output stays in place."""
    from stgt_pipeline.io.atomic import keep_evidence, write_json  # stage plumbing, not needed to validate a frame

    name = json.loads(Path(suite).read_text(encoding="utf-8"))["name"]
    report = f"{name}_suite.html"
    result = validate_dataframe(df, suite=suite, expectation_parameters=expectation_parameters, html_path=tmp / report,
                                title=title)
    write_json(tmp / f"{name}_suite.json", result.as_dict())
    if not result.success:
        keep_evidence(tmp, failed, [report, f"{name}_suite.json", *evidence])
        lines = "\n".join(f"- {s}" for s in result.summary)
        raise StageFailed(f"{stage}: {name} suite failed; report: {failed / report}\n{lines}")
    return result


def _label(row: dict[str, Any]) -> str:
    column = row["kwargs"].get("column") or row["kwargs"].get("column_list") or ""
    return f"{row['expectation']}({column})" if column else row["expectation"]


def _explain(row: dict[str, Any]) -> str:
    what = _label(row)
    if row.get("error"):
        return f"{what}: could not be evaluated: {row['error']}"
    if row.get("unexpected_count"):
        ex = ", ".join(row["unexpected_examples"])
        return f"{what}: {row['unexpected_count']} of {row['element_count']} rows fail, e.g. {ex}"
    return f"{what}: observed {row['observed_value']!r}"


def _plain(value: Any) -> Any:
    """A numpy scalar as the Python value it holds (False, not np.False_)."""
    return value.item() if hasattr(value, "item") and getattr(value, "ndim", 1) == 0 else value


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))


def render_html(result: SuiteResult, title: str, quarantine: list[dict[str, Any]] | None = None,
                passed: bool | None = None) -> str:
    """The report page. `quarantine` ({video_id, path, reason} rows the gate set aside) adds a table listing each;
    `passed` overrides the status line (a gate that passes once its quarantined rows are set aside)."""
    passed = result.success if passed is None else passed
    status = ("PASSED" if passed else "FAILED") + (f", {len(quarantine)} quarantined" if quarantine else "")
    colour = "#1a7f37" if passed else "#cf222e"
    body = []
    for r in result.results:
        mark = "&#10003;" if r["success"] else "&#10007;"
        detail = html.escape(json.dumps(r["kwargs"], default=str))
        observed = r.get("error") or (
            f"{r['unexpected_count']} unexpected: {', '.join(r['unexpected_examples'])}" if r.get("unexpected_count")
            else json.dumps(r["observed_value"], default=str))
        body.append(
            f"<tr class={'ok' if r['success'] else 'bad'}><td>{mark}</td><td>{html.escape(r['expectation'])}</td>"
            f"<td><code>{detail}</code></td><td>{html.escape(str(observed))}</td></tr>")
    stats = ", ".join(f"{k}: {v}" for k, v in result.statistics.items())
    set_aside = "" if not quarantine else (
        f"<h2>Quarantined ({len(quarantine)})</h2><table><tr><th>video_id</th><th>path</th><th>reason</th></tr>"
        + "".join(f"<tr class=bad><td>{html.escape(str(q['video_id']))}</td><td>{html.escape(str(q['path']))}</td>"
                  f"<td>{html.escape(str(q['reason']))}</td></tr>" for q in quarantine) + "</table>")
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>body{{font-family:system-ui,sans-serif;margin:2em}} table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:4px 8px;text-align:left;vertical-align:top}} tr.bad{{background:#ffebe9}}
.status{{color:{colour};font-weight:bold}}</style></head>
<body><h1>{html.escape(title)}</h1>
<p class="status">{status}</p><p>{html.escape(stats)}</p>
<table><tr><th></th><th>expectation</th><th>arguments</th><th>observed</th></tr>
{''.join(body)}
</table>{set_aside}<p>Great Expectations suite <code>{html.escape(result.suite)}</code>.</p>
</body></html>
"""
