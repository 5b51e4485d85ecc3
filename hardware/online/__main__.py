import sys

from hardware.online.cli import main

sys.exit(main())
