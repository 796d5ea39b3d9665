from fl_server.cli import main
import sys

sys.exit(main())
