import sys

from qtapp.cli import main

sys.exit(main())
