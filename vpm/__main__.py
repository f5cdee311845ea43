import sys

from vpm.faces.cli import main

sys.exit(main())
