import sys

from babyssm.commands.main import main

sys.exit(main())
