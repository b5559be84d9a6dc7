"""A task type that writes a log record while it runs (tests/test_logging.py)."""

from __future__ import annotations

import logging
from typing import Any

from batchtasks import BatchTaskPlugin, batchtask

logger = logging.getLogger(__name__)


@batchtask("tests.log_line", description="Log one line naming params['word'].")
class LogLine(BatchTaskPlugin):
    """Log ``plugin says word=<word>`` at INFO and return the word."""

    def run(self, params: dict[str, Any]) -> str:
        logger.info("plugin says word=%s", params["word"])
        return str(params["word"])
