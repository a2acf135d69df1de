"""conform: conform records from many differently shaped sources to one JSON Schema.

Three calls, each the counterpart of a command of the ``conform`` CLI:

- :func:`run` runs every source (``conform run``): the same output files and
  ``run_summary.json``, returned as a :class:`RunSummary`;
- :func:`map` writes and returns each source's :class:`MappingDocument` for review
  (``conform map``);
- :func:`transform` gives one source's valid and invalid rows as two Arrow streams
  (``__arrow_c_stream__``), read batch by batch with bounded memory;
- :func:`review` and :func:`pin` are the review page's data and its "Pin" button
  (``conform review``).

:func:`map` and :func:`transform` also take in-memory data instead of a config: any object
with ``__arrow_c_stream__`` (pyarrow, Polars, DuckDB, …) and the internal JSON Schema, as in
``conform.transform(df, schema)``.

``config`` is the path of a config file, or the config itself as a ``dict`` (its relative
paths then resolve against the working directory). Errors are raised as :class:`ConfigError`,
:class:`SourceError`, :class:`CredentialsError` or :class:`MappingError` (all
:class:`ConformError`), with the CLI's messages; they never contain a secret. The GIL is
released while the engine works, and Ctrl-C interrupts a run.
"""

from __future__ import annotations

import json
import os
from typing import Any, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple, Union

from . import _conform
from ._conform import (
    ArrowStream,
    ConfigError,
    ConformError,
    CredentialsError,
    MappingError,
    SourceError,
)

__version__ = _conform.__version__

__all__ = [
    "ArrowStream",
    "ConfigError",
    "ConformError",
    "CredentialsError",
    "MappingDocument",
    "MappingError",
    "RunSummary",
    "SourceError",
    "map",
    "pin",
    "review",
    "run",
    "transform",
]

ConfigLike = Union[str, "os.PathLike[str]", Mapping[str, Any]]
SchemaLike = Union[str, "os.PathLike[str]", Mapping[str, Any]]

_MAPPERS = ("auto", "heuristic", "llm", "file")


def _config(config: ConfigLike) -> Tuple[str, bool]:
    """The config as (path, False) or (JSON text, True)."""
    if isinstance(config, Mapping):
        return json.dumps(config), True
    if isinstance(config, (str, os.PathLike)):
        return os.fspath(config), False
    raise TypeError(f"config must be a path or a dict, not {type(config).__name__}")


def _sources(sources: Optional[Union[str, Sequence[str]]]) -> List[str]:
    if sources is None:
        return []
    if isinstance(sources, str):
        return [sources]
    return list(sources)


class SourceSummary:
    """One source's entry of ``run_summary.json``."""

    def __init__(self, name: str, data: Dict[str, Any]):
        self.name = name
        self._data = data

    @property
    def status(self) -> str:
        """``ok`` or ``failed``."""
        return self._data["status"]

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    @property
    def rows_read(self) -> int:
        return self._data["rows_read"]

    @property
    def valid(self) -> int:
        return self._data["valid"]

    @property
    def invalid(self) -> int:
        return self._data["invalid"]

    @property
    def error(self) -> Optional[str]:
        """Why the source failed, or ``None``."""
        return self._data.get("error")

    @property
    def outputs(self) -> Dict[str, Optional[str]]:
        """The ``valid`` and ``invalid`` output files."""
        return dict(self._data.get("outputs") or {})

    def to_dict(self) -> Dict[str, Any]:
        return json.loads(json.dumps(self._data))

    def __repr__(self) -> str:
        return (
            f"SourceSummary({self.name!r}, status={self.status!r}, rows_read={self.rows_read}, "
            f"valid={self.valid}, invalid={self.invalid})"
        )


class RunSummary:
    """What a run did: the content of its ``run_summary.json``."""

    def __init__(self, data: Dict[str, Any]):
        self._data = data
        self.sources: Dict[str, SourceSummary] = {
            name: SourceSummary(name, s) for name, s in data["sources"].items()
        }

    @property
    def ok(self) -> bool:
        """Whether every source ran to the end (the CLI's exit code 0)."""
        return all(s.ok for s in self.sources.values())

    @property
    def totals(self) -> Dict[str, int]:
        """``sources_ok``, ``sources_failed``, ``rows_read``, ``valid``, ``invalid``."""
        return dict(self._data["totals"])

    @property
    def duration_s(self) -> float:
        return self._data["duration_s"]

    def to_dict(self) -> Dict[str, Any]:
        """The summary as plain JSON values, as written to ``run_summary.json``."""
        return json.loads(json.dumps(self._data))

    def __repr__(self) -> str:
        t = self.totals
        return (
            f"RunSummary(ok={self.ok}, sources={len(self.sources)}, rows_read={t['rows_read']}, "
            f"valid={t['valid']}, invalid={t['invalid']})"
        )


class MappingDocument:
    """A source's mapping document: one SQL expression per target field, with the mapper's
    confidence, rationale and ranked candidates. Round-trips to the same JSON the CLI writes
    (``to_json``/``from_json``)."""

    def __init__(self, data: Dict[str, Any]):
        self._data = data

    @classmethod
    def from_json(cls, text: str) -> "MappingDocument":
        return cls(json.loads(text))

    def to_json(self, indent: Optional[int] = 2) -> str:
        return json.dumps(self._data, indent=indent)

    def to_dict(self) -> Dict[str, Any]:
        return json.loads(json.dumps(self._data))

    @property
    def fields(self) -> Dict[str, Dict[str, Any]]:
        """Target field → its mapping (``expr``, ``sources``, ``confidence``, …)."""
        return self._data["fields"]

    @property
    def expressions(self) -> Dict[str, Optional[str]]:
        """Target field → its SQL expression (``None`` when unmapped)."""
        return {k: v.get("expr") for k, v in self.fields.items()}

    @property
    def unmapped(self) -> List[str]:
        return [k for k, v in self.fields.items() if v.get("expr") is None]

    @property
    def pinned(self) -> bool:
        """Whether the document is used whatever the source's columns (reviewed)."""
        return bool(self._data.get("pinned", False))

    @pinned.setter
    def pinned(self, value: bool) -> None:
        self._data["pinned"] = bool(value)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, MappingDocument) and self._data == other._data

    def __repr__(self) -> str:
        return f"MappingDocument(fields={len(self.fields)}, unmapped={len(self.unmapped)})"


def _mapper(mapper: str) -> str:
    if mapper not in _MAPPERS:
        raise ValueError(f"unknown mapper {mapper!r}; valid mappers are {', '.join(_MAPPERS)}")
    return mapper


def run(
    config: ConfigLike,
    *,
    sources: Optional[Union[str, Sequence[str]]] = None,
    mapper: str = "auto",
    output_format: Optional[str] = None,
    output_dir: Optional[Union[str, "os.PathLike[str]"]] = None,
    run_id: Optional[str] = None,
) -> RunSummary:
    """Runs the sources (all, or those named) as ``conform run`` does and returns the summary.

    A source that fails is a failed entry of the summary (``summary.ok`` is then false), as in
    the CLI; what stops the whole run (the config, the schema, the output directory) raises.
    ``run_id`` names the run in Delta commits (``output_format="delta"``); a run id already
    committed to a table adds nothing to it again, as ``conform run --run-id``.
    """
    text, is_text = _config(config)
    out = os.fspath(output_dir) if output_dir is not None else None
    summary = _conform.run(
        text, is_text, _sources(sources), _mapper(mapper), output_format, out, run_id
    )
    return RunSummary(json.loads(summary))


def map(
    config: Any,
    schema: Optional[SchemaLike] = None,
    /,
    *,
    sources: Optional[Union[str, Sequence[str]]] = None,
    mapper: str = "auto",
    **settings: Any,
) -> Any:
    """Works out a mapping.

    ``map(config)`` works out (or reads) each configured source's mapping document, writes it
    for review as ``conform map`` does, and returns the documents by source name.

    ``map(data, schema)``, where ``data`` is any object with ``__arrow_c_stream__`` (a pyarrow
    Table or RecordBatchReader, a Polars DataFrame, a DuckDB relation, …), maps in-memory data
    onto ``schema`` (the internal JSON Schema as a dict or a path) and returns its
    :class:`MappingDocument`; nothing is written. Only a sample is read (the first rows, up to
    the sampling bound). The keyword arguments are those of :func:`transform` on data.
    """
    if _is_data(config):
        if sources is not None:
            raise TypeError("sources= names configured sources; in-memory data is named with name=")
        doc = _conform.map_data(config, *_data_args(schema, settings), _mapper(mapper))
        return MappingDocument.from_json(doc)
    _no_data_settings(schema, settings)
    text, is_text = _config(config)
    docs = _conform.map(text, is_text, _sources(sources), _mapper(mapper))
    return {name: MappingDocument.from_json(doc) for name, doc in docs}


def transform(
    config: Any,
    source: Optional[Union[str, SchemaLike]] = None,
    /,
    *,
    mapper: str = "auto",
    schema: Optional[SchemaLike] = None,
    mapping: Optional[Union[MappingDocument, Mapping[str, Any], str, "os.PathLike[str]"]] = None,
    **settings: Any,
) -> Tuple[ArrowStream, ArrowStream]:
    """Rows as two Arrow streams: the valid rows in the target's Arrow schema, and the
    invalid rows (``source_file``, ``row``, ``record`` as JSON text, ``raw``, ``errors`` as a
    list of ``field``/``rule``/``message``).

    ``transform(config, source)`` runs one configured source; no output files are written,
    except the mapping document.

    ``transform(data, schema)`` (or ``schema=``) runs in-memory data: any object with
    ``__arrow_c_stream__``, read batch by batch and never collected. ``mapping`` is a mapping
    document to use as it is (a :class:`MappingDocument`, its dict, or a path): no mapper and no
    LLM request, and a :class:`MappingError` naming the columns if the data lacks some the
    document reads. Further keywords:

    - ``config``: a config (path or dict) whose settings apply; its ``data_sources`` are not read;
    - ``name`` (default ``"data"``): the name in messages and in the mapping document;
    - ``source_file`` (default ``"<memory>"``): what the invalid rows' ``source_file`` says;
      their ``row`` is the row's 1-based position in the stream;
    - any top-level config key (``llm``, ``feedback``, ``limits``, ``batch_size``, …), over
      the config's.

    Nothing is written in either form except, for a configured source, its mapping document.

    Each stream implements ``__arrow_c_stream__`` and is consumed once, e.g. by
    ``pyarrow.RecordBatchReader.from_stream(valid)``, ``polars.from_arrow(valid)`` or
    ``duckdb.from_arrow(valid)``. Rows flow batch by batch with bounded memory; the two
    streams may be read in either order (a side whose reader is not reading spills to a
    temporary file rather than stall the other), and ``close()`` drops one unread.
    """
    if _is_data(config):
        if source is not None and schema is not None:
            raise TypeError("give the schema once: as the second argument or as schema=")
        schema = source if source is not None else schema
        return _conform.transform_data(
            config, *_data_args(schema, settings), _mapper(mapper), _document(mapping)
        )
    if not isinstance(source, str):
        raise TypeError(
            "transform(config, source) takes a source name; to transform in-memory data, "
            "pass an object with __arrow_c_stream__ first"
        )
    _no_data_settings(schema, settings, mapping)
    text, is_text = _config(config)
    return _conform.transform(text, is_text, source, _mapper(mapper))


def _is_data(obj: Any) -> bool:
    """Whether ``obj`` is in-memory data (the Arrow PyCapsule stream interface)."""
    return hasattr(obj, "__arrow_c_stream__")


def _schema(schema: SchemaLike) -> Any:
    if isinstance(schema, Mapping):
        return dict(schema)
    if isinstance(schema, (str, os.PathLike)):
        with open(os.fspath(schema), encoding="utf-8") as f:
            return json.load(f)
    raise TypeError(f"schema must be a dict or a path, not {type(schema).__name__}")


def _data_args(schema: Optional[SchemaLike], settings: Dict[str, Any]) -> Tuple[Any, ...]:
    """The arguments ``_conform.map_data``/``transform_data`` take after the data."""
    settings = dict(settings)
    config = settings.pop("config", None)
    name = settings.pop("name", "data")
    label = settings.pop("source_file", "<memory>")
    if schema is not None:
        settings["internal_schema"] = _schema(schema)
    if config is None:
        if "internal_schema" not in settings:
            raise TypeError("in-memory data needs a schema: map(data, schema) / transform(data, schema)")
        text, is_text = None, True
    else:
        text, is_text = _config(config)
    return (text, is_text, json.dumps(settings), str(name), str(label))


def _document(mapping: Any) -> Optional[str]:
    if mapping is None:
        return None
    if isinstance(mapping, MappingDocument):
        return mapping.to_json()
    if isinstance(mapping, Mapping):
        return json.dumps(dict(mapping))
    if isinstance(mapping, (str, os.PathLike)):
        with open(os.fspath(mapping), encoding="utf-8") as f:
            return f.read()
    raise TypeError(
        f"mapping must be a MappingDocument, a dict or a path, not {type(mapping).__name__}"
    )


def _no_data_settings(schema: Any, settings: Dict[str, Any], mapping: Any = None) -> None:
    """A configured source takes its schema and settings from its config."""
    extra = sorted(settings) + (["schema"] if schema is not None else [])
    extra += ["mapping"] if mapping is not None else []
    if extra:
        raise TypeError(
            f"{', '.join(extra)}: only for in-memory data; a configured source takes them "
            "from its config"
        )


Decisions = Mapping[str, Mapping[str, Any]]


def review(
    config: ConfigLike,
    source: str,
    /,
    *,
    decisions: Optional[Decisions] = None,
    rows: int = 200,
    mapper: str = "auto",
) -> Dict[str, Any]:
    """What the review page shows for one configured source, as a dict.

    The mapping is the one ``conform run`` would use: the stored document when it settles the
    source, else a new proposal made in memory. ``decisions`` (field → ``{"expr": ... or None,
    "values": {source value: allowed value}, "reviewed": bool}``) are applied to it, and the
    first ``rows`` rows of the source are run through it and through each rank of candidates.
    The result has ``source``, ``path`` (where a pin writes), ``base`` (the stored document's
    version, for :func:`pin`), ``summary`` (fields, mapped, mean confidence, rows, valid,
    invalid), ``document`` (the mapping with the decisions), ``fields`` (every field in order
    of need: ``attention``, examples, candidates with their own examples, the value table, a
    decision's compile error) and ``invalid_rows``. Nothing is written.
    """
    text, is_text = _config(config)
    out = _conform.review(
        text, is_text, source, _mapper(mapper), rows, json.dumps(dict(decisions or {}))
    )
    return json.loads(out)


def pin(
    config: ConfigLike,
    source: str,
    /,
    *,
    base: str,
    decisions: Optional[Decisions] = None,
    reviewer: Optional[str] = None,
    rows: int = 200,
    mapper: str = "auto",
) -> Dict[str, Any]:
    """Writes the source's mapping with ``decisions`` applied, pinned, as the review page's Pin
    does: atomically, the document it replaces kept as ``NAME.mapping.previous.json``, each
    decision recorded in the document's ``reviews`` with ``reviewer`` (default: the
    operating-system user) and the time.

    ``base`` is the ``base`` of the :func:`review` the decisions were made on; if the stored
    document changed since, nothing is written and :class:`MappingError` is raised. A decision
    whose expression does not compile raises it too. Returns ``path``, ``previous``,
    ``version`` and the ``entries`` added.
    """
    text, is_text = _config(config)
    out = _conform.pin(
        text,
        is_text,
        source,
        _mapper(mapper),
        rows,
        json.dumps(dict(decisions or {})),
        base,
        reviewer,
    )
    return json.loads(out)
