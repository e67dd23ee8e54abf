"""A workers' module that configures logging itself when imported, as an application may."""

from __future__ import annotations

import logging
import sys

from pool_workers import chatty

logging.basicConfig(stream=sys.stderr, level=logging.INFO, format="MINE %(name)s %(message)s")

__all__ = ["chatty"]
