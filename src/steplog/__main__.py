import sys

from steplog.cli import main

sys.exit(main())
