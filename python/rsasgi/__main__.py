import sys

from rsasgi import main

sys.exit(main())
