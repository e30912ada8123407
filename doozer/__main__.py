import sys

from doozer.cli import main

sys.exit(main())
