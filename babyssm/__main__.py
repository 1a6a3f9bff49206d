import sys

from babyssm.cli import main

sys.exit(main())
