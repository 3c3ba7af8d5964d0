import sys

from qanat.cli import main

sys.exit(main())
