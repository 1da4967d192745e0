import sys

from coral_cli import main

sys.exit(main())
