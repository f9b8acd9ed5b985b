import sys

from iterprune.cli import main

sys.exit(main())
