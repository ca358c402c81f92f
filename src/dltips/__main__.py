import sys

from dltips.cli import main

sys.exit(main())
