"""Type stubs of the compiled module; the documented API is in ``conform/__init__.py``."""

from typing import Any, List, Optional, Tuple

__version__: str

class ConformError(Exception): ...
class ConfigError(ConformError): ...
class SourceError(ConformError): ...
class CredentialsError(SourceError): ...
class MappingError(ConformError): ...

class ArrowStream:
    """A stream of Arrow record batches, consumed once through ``__arrow_c_stream__``."""

    @property
    def column_names(self) -> List[str]: ...
    def __arrow_c_stream__(self, requested_schema: Optional[Any] = None) -> Any: ...
    def close(self) -> None: ...

def run(
    config: str,
    is_text: bool,
    sources: List[str],
    mapper: str,
    output_format: Optional[str] = None,
    output_dir: Optional[str] = None,
    run_id: Optional[str] = None,
) -> str: ...
def map(config: str, is_text: bool, sources: List[str], mapper: str) -> List[Tuple[str, str]]: ...
def transform(
    config: str, is_text: bool, source: str, mapper: str
) -> Tuple[ArrowStream, ArrowStream]: ...
def map_data(
    data: Any,
    config: Optional[str],
    is_text: bool,
    overrides: str,
    name: str,
    label: str,
    mapper: str,
) -> str: ...
def transform_data(
    data: Any,
    config: Optional[str],
    is_text: bool,
    overrides: str,
    name: str,
    label: str,
    mapper: str,
    document: Optional[str] = None,
) -> Tuple[ArrowStream, ArrowStream]: ...
def review(
    config: str, is_text: bool, source: str, mapper: str, rows: int, decisions: str
) -> str: ...
def pin(
    config: str,
    is_text: bool,
    source: str,
    mapper: str,
    rows: int,
    decisions: str,
    base: str,
    reviewer: Optional[str] = None,
) -> str: ...
