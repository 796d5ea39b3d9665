import sys

from fl_data.cli import main

sys.exit(main())
