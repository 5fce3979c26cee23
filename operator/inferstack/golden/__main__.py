import sys

from inferstack.golden.runner import main

sys.exit(main())
