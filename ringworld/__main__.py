import sys

from ringworld.cli import main

sys.exit(main())
