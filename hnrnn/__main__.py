import sys

from hnrnn.cli import main

sys.exit(main())
