from fl_node.cli import main
import sys

sys.exit(main())
