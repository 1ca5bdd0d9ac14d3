"""Data: uint8 sources, scenarios that cut them into task streams, batched device-side augmentation."""
from .augment import BatchTransform
from .scenarios import SCENARIOS, Stream, StreamError, Task, TrainingTask, build_stream
from .sources import SOURCES, DatasetNotFoundError, Source, default_root, load_source

__all__ = ["BatchTransform", "SCENARIOS", "Stream", "StreamError", "Task", "TrainingTask", "build_stream", "SOURCES",
           "DatasetNotFoundError", "Source", "default_root", "load_source"]

from .cache import DataWarning  # noqa: E402
from .sources import DataError, fingerprint  # noqa: E402

__all__ += ["DataError", "DataWarning", "fingerprint"]
