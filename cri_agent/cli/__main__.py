"""``python -m cri_agent.cli`` runs the ``coral`` command."""

import sys

from cri_agent.cli import main

sys.exit(main())
