"""Lightweight components from generated source.

A lightweight component ships its function's *source* into the pod (kfp reads it with inspect.getsource), and its
signature is its interface. Stage components need one signature per stage (its params, inputs and
outputs), so their source is generated from the stage table and defined here; registering it with linecache lets
inspect.getsource find it like any other function's. The generated body only calls into the installed project.
"""
from __future__ import annotations

import linecache
from typing import Any, Callable

from kfp import dsl
from kfp.dsl import HTML, Artifact, Dataset, Input, Metrics, Model, Output
from kfp.dsl.python_component import PythonComponent

# Names the generated signatures use; the pod's component module gets the same from `from kfp.dsl import *`.
_NAMESPACE: dict[str, Any] = {"dsl": dsl, "Input": Input, "Output": Output, "Artifact": Artifact,
                              "Dataset": Dataset, "HTML": HTML, "Metrics": Metrics, "Model": Model}


def define(name: str, source: str) -> Callable[..., Any]:
    """Define function `name` from `source` so that inspect.getsource returns `source`."""
    filename = f"<stgt generated {name}>"
    linecache.cache[filename] = (len(source), None, source.splitlines(keepends=True), filename)
    namespace = dict(_NAMESPACE, __name__=__name__)
    # dont_inherit: this module's `from __future__ import annotations` would turn the annotations kfp reads into strings.
    exec(compile(source, filename, "exec", dont_inherit=True), namespace)  # noqa: S102 - built from the stage table
    return namespace[name]


def lightweight_component(name: str, source: str, image: str, **options: Any) -> PythonComponent:
    """A lightweight component on our own image: the project and kfp are installed there, no pip at run time.
    `options`: more dsl.component arguments (task_config_passthroughs)."""
    return dsl.component(define(name, source), base_image=image, install_kfp_package=False, **options)


def call(function: str, arguments: dict[str, str]) -> str:
    """Source of a call with one keyword argument per line (arguments are source expressions)."""
    lines = "".join(f"        {k}={v},\n" for k, v in arguments.items())
    return f"    {function}(\n{lines}    )\n"


def function_source(name: str, parameters: list[str], doc: str, imports: str, body: str, returns: str = "") -> str:
    params = "".join(f"    {p},\n" for p in parameters)
    arrow = f" -> {returns}" if returns else ""
    return f"def {name}(\n{params}){arrow}:\n    {doc!r}\n    {imports}\n\n{body}"
