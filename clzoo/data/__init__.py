"""Data: uint8 sources, scenarios that cut them into task streams, batched device-side augmentation."""
from .augment import BatchTransform
from .cache import DataWarning
from .scenarios import SCENARIOS, Stream, StreamError, Task, build_stream
from .sources import SOURCES, DataError, DatasetNotFoundError, Source, default_root, fingerprint, load_source

__all__ = ["BatchTransform", "SCENARIOS", "Stream", "StreamError", "Task", "build_stream", "SOURCES",
           "DataError", "DataWarning", "DatasetNotFoundError", "Source", "default_root", "fingerprint", "load_source"]
