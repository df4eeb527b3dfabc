import sys

from ermgap_ray.train.cli import main

sys.exit(main())
