"""`python -m elastiq.cli`: how `elastiq run` starts its agent processes."""

from __future__ import annotations

import sys

from elastiq.cli.main import main

sys.exit(main())
