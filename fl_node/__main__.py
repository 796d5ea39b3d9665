import sys

from fl_node.cli import main

sys.exit(main())
