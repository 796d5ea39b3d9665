import sys

from fl_server.aggregator.cli import main

sys.exit(main())
