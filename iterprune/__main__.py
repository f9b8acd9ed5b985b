import sys

from iterprune.cli.table import main

sys.exit(main())
