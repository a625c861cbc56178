"""``python -m otel_llm_receiver`` is the ``otel-llm-receiver`` command."""

import sys

from .cli import main

sys.exit(main())
